"""Real `torchrun --nproc_per_node=2` runs (gloo on the CPU): training, gradients, sharded evaluation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import run_cli
from tests.helpers.train_setup import overrides, write_setup
from vlmsam.data.synth import write_synth


def torchrun(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = write_setup(tmp_path_factory.mktemp("ddp"))
    val = root / "data" / "reason_seg" / "ReasonSeg" / "val"
    for k in range(3):  # more validation images, so both ranks have work
        shutil.copy(val / "street.jpg", val / f"street{k}.jpg")
        anno = json.loads((val / "street.json").read_text())
        anno["text"] = [f"request number {k}"]
        anno["is_sentence"] = k % 2 == 0
        (val / f"street{k}.json").write_text(json.dumps(anno))
    write_synth(root / "synth", 12, seed=0, progress=False)  # grounding answers for box_prompt
    return root


# Per design, what its run needs besides the shared setup (proposal_select: see test_llmseg_train.py).
DESIGNS = {
    "seg_token": lambda root: {},
    "box_prompt": lambda root: {"model.grounding_weight": 1.0, "data.datasets": "synth",
                                "data.sample_rates": "1", "data.dataset_dir": root / "synth",
                                "data.synth_answer_format": "grounding"},
}


def test_torchrun_training_completes(setup, tmp_path):
    run = tmp_path / "run"
    proc = torchrun("-m", "vlmsam", "train", *overrides(setup, run, **{"train.epochs": 1}))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("val gIoU") == 1  # rank 0 reports the all-reduced score once
    assert "(n=4)" in proc.stdout  # every validation request, from both ranks
    assert (run / "checkpoints" / "step_000004" / "trainer_state.pt").is_file()
    state = torch.load(run / "checkpoints" / "step_000004" / "trainer_state.pt", weights_only=True)
    assert len(state["rng"]) == 2  # each rank's RNG, for an exact resume


@pytest.mark.parametrize("design", sorted(DESIGNS))
def test_ddp_gradients_equal_one_process_with_the_same_global_batch(setup, tmp_path, design):
    # model_type first: choosing a design resets the model section to its defaults
    args = [f"model.model_type={design}",
            *overrides(setup, tmp_path / "unused", **{"model.lora_dropout": 0.0, "train.batch_size": 2, **DESIGNS[design](setup)})]
    script = os.path.join(os.path.dirname(__file__), "helpers", "ddp_grads.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script,
                           tmp_path / "ddp.pt", *args], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    proc = subprocess.run([sys.executable, script, tmp_path / "one.pt", *args], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ddp, one = torch.load(tmp_path / "ddp.pt", weights_only=True), torch.load(tmp_path / "one.pt", weights_only=True)
    assert ddp.keys() == one.keys() and len(ddp) >= 8  # box_prompt: LoRA on 2 layers x q, v x A, B + embeddings + lm_head
    nonzero = 0
    for name in ddp:
        torch.testing.assert_close(ddp[name], one[name], rtol=1e-4, atol=1e-7, msg=name)
        nonzero += bool(one[name].abs().sum() > 0)
    assert nonzero >= 6  # LoRA A has no gradient while B is still zero


def test_sharded_evaluation_equals_single_process(setup, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", *overrides(setup, run, **{"train.epochs": 1, "eval.val_dataset": ""})).returncode == 0
    model = run / "checkpoints" / "step_000004"
    common = ["--model", model, "--dataset", "reason_seg:val", "--dataset-dir", setup / "data", "--max-new-tokens", "8"]
    one = run_cli("evaluate", *common, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun("-m", "vlmsam", "evaluate", *common, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m1 == m2 and m1["n"] == 4 and m1["short_query"]["n"] == 1 and m1["long_query"]["n"] == 3
    assert (tmp_path / "one" / "predictions.jsonl").read_text() == (tmp_path / "two" / "predictions.jsonl").read_text()
