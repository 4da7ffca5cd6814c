"""Training the box_prompt design (model.model_type: box_prompt) on tiny real models: grounding answers on
synthetic scenes, an exact resume, and a checkpoint that `vlmsam segment --model` loads as box_prompt; the
grounding-attention queries of a grounding answer (each coordinate's edge of the object)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli
from tests.helpers.train_setup import write_setup
from vlmsam.data import Sample
from vlmsam.data.synth import write_synth


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = write_setup(tmp_path_factory.mktemp("box_prompt"))
    write_synth(root / "synth", 12, seed=0, progress=False)
    return root


def overrides(root, run_dir, **extra):
    base = {
        "model.model_type": "box_prompt", "model.vlm": root / "vlm", "model.sam": root / "sam", "model.lora_r": 4,
        "model.lora_alpha": 8, "model.grounding_weight": 1.0, "model.number_sigma": 1.0, "model.answer_start_weight": 5.0,
        "data.dataset_dir": root / "synth", "data.datasets": "synth", "data.sample_rates": "1", "data.num_workers": 0,
        "data.synth_answer_format": "grounding", "train.run_dir": run_dir, "train.steps_per_epoch": 4, "train.epochs": 1,
        "train.batch_size": 2, "train.warmup_steps": 1, "train.save_every": 2, "train.log_every": 1,
        "train.progress": False, "eval.val_dataset": "",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_train_resume_exactly_and_segment_with_the_checkpoint(setup, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    proc = run_cli("train", *overrides(setup, full))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(x) for x in (full / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(r["grounding_loss"] > 0 for r in log)
    assert run_cli("train", *overrides(setup, cut, **{"train.stop_at_step": 2})).returncode == 0
    proc = run_cli("train", *overrides(setup, cut), "--resume", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = [json.loads(x) for x in (cut / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in log]
    a, b = full / "checkpoints" / "step_000004", cut / "checkpoints" / "step_000004"
    for name in ("adapter/adapter_model.safetensors", "vlm/model.safetensors"):
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name

    config = json.loads((a / "vlmsam_config.json").read_text())
    assert config["model_type"] == "vlmsam_box_prompt" and config["vlm"] == "vlm"
    assert config["training"]["lora_r"] == 4
    image = next((setup / "synth").rglob("*.jpg"))
    proc = run_cli("segment", image, "Find the red circle.", "--model", a, "--out", tmp_path / "out", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((tmp_path / "out").iterdir())  # the result written


def cell_shares(mask, gh, gw):
    """Each cell's share of ``mask`` on a gh x gw grid (adaptive pooling's cell bounds), row-major."""
    h, w = mask.shape
    return np.array([mask[i * h // gh: -(-(i + 1) * h // gh), j * w // gw: -(-(j + 1) * w // gw)].mean()
                     for i in range(gh) for j in range(gw)])


def target(shape=(60, 80), box=(10, 30, 20, 50)):
    m = np.zeros(shape, np.uint8)
    m[box[0]:box[1], box[2]:box[3]] = 1
    return m


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return (rng.random((60, 80, 3)) * 255).astype(np.uint8)


def make_model(setup, **overrides):
    from vlmsam.box_prompt.training import BoxPromptTrainingModel
    from vlmsam.box_prompt.training_config import BoxPromptTrainConfig

    torch.manual_seed(0)
    return BoxPromptTrainingModel.build(BoxPromptTrainConfig(vlm=str(setup / "vlm"), sam=str(setup / "sam"), **overrides))


@pytest.mark.parametrize("number_tokens", [False, True])
def test_grounding_answers_look_at_each_coordinates_edge_of_the_object(setup, image, number_tokens):
    """A box answer's x1 / y1 / x2 / y2 are read where the object's leftmost / top / rightmost / bottom
    cells are, its point over the whole object, its decision over the answer's objects; every digit
    of a number (Qwen splits them) is predicted looking there, and a caption's numbers are not."""
    from vlmsam.data.grounding_answers import grounding_answers

    model = make_model(setup, use_lora=False, grounding_weight=1.0)
    if number_tokens:
        model.processor.tokenizer.add_tokens([str(n) for n in range(10, 100)])
    a, b = target(box=(8, 40, 0, 24)), target(box=(40, 60, 48, 80))
    convs, _, objects = grounding_answers([[("Segment both squares.", "[SEG] [SEG]")], [("Describe it.", "There are 2 squares.")]],
                                          np.stack([a, b]), (28, 40), prefix="2 squares. ")
    sample = Sample(image, convs, np.zeros((0, 60, 80), np.uint8), name="s0", meta={"box_objects": objects})
    batch = model.collator([sample])
    _, gh, gw = (batch.image_grid_thw[0] // 2).tolist()
    queries = model.grounding_queries(batch)
    ids, labels = batch.input_ids[0], batch.labels[0]
    digits = torch.isin(ids, model.number_tokens("cpu")[0]) & (labels != -100)
    answer = torch.nonzero(labels != -100)[:, 0]
    decode = model.processor.tokenizer.decode
    # digits past the caption prefix, by the text decoded before them
    predicted_digits = [int(p) for p in torch.nonzero(digits)[:, 0] if len(decode(ids[answer[0]:p])) >= len("2 squares. ")
                        and not decode(ids[p - 1:p]).endswith("_") and not decode(ids[p + 1:p + 2]).startswith("d")]  # not "_2d"
    assert all(r == 0 for r, *_ in queries)  # nothing from the caption row
    assert [q for _, q, *_ in queries][1:] == [p - 1 for p in predicted_digits]
    import re
    numbers = re.findall(r"[\[,](\d+)", convs[0][0][1])
    assert len(numbers) == 12 and len(predicted_digits) == (12 if number_tokens else sum(map(len, numbers)))
    shares = [cell_shares(m.astype(np.float64), gh, gw).reshape(gh, gw) for m in (a, b)]
    np.testing.assert_allclose(queries[0][3].numpy(), (shares[0] + shares[1]).ravel() / (shares[0] + shares[1]).sum(), atol=1e-6)
    first_number = [q for _, q, _, w in queries[1:]]
    wanted = [w.numpy().reshape(gh, gw) for *_, w in queries[1:]]
    x1 = wanted[0]
    cols = np.nonzero(shares[0].sum(0))[0]
    assert np.nonzero(x1.sum(0))[0].tolist() == [cols.min()]  # only the leftmost column of object a
    np.testing.assert_allclose(x1[:, cols.min()], shares[0][:, cols.min()] / shares[0][:, cols.min()].sum(), atol=1e-6)
    last = wanted[-1]  # object b's point: all of b
    np.testing.assert_allclose(last, shares[1] / shares[1].sum(), atol=1e-6)
    assert len(first_number) == len(set(first_number))

