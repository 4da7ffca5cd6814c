"""`vlmsam train` on tiny real models: a full run, exact resume after SIGKILL, atomic checkpoints,
every switch both ways."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli
from tests.helpers.train_setup import overrides, write_setup
from vlmsam.errors import CheckpointError
from vlmsam.seg_token import SegTokenModel
from vlmsam.train import checkpoint as ckpt
from vlmsam.train.config import ConfigError, TrainConfig
from vlmsam.vlm.runtime import set_gradient_checkpointing


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return write_setup(tmp_path_factory.mktemp("train"))


def weights(checkpoint):
    out = dict(load_file(str(checkpoint / "trainable.safetensors")))
    out.update({f"lora.{k}": v for k, v in load_file(str(checkpoint / "adapter" / "adapter_model.safetensors")).items()})
    return out


def test_full_run_writes_everything_and_the_checkpoint_serves(setup, tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", *overrides(setup, run, **{"train.keep_last": 1}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val gIoU" in proc.stdout and "epoch 1 done; bad samples: none" in proc.stdout
    names = sorted(p.name for p in ckpt.list_checkpoints(run))
    best = json.loads((run / "best.json").read_text())["checkpoint"].split("/")[-1]
    assert names == sorted({"step_000008", best})  # the last one plus the best
    saved = TrainConfig.load(run / "config.yaml")
    assert saved.model_type == "seg_token" and "model_type: seg_token" in (run / "config.yaml").read_text()
    assert saved.train.batch_size == 2 and saved.data.refer_seg_data == "refcoco" and saved.model.lora_r == 4
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 9))
    # the trainer logs whatever named losses the design's model returns (SegOutput.losses())
    assert {"loss", "ce_loss", "bce_loss", "dice_loss"} <= set(next(r for r in log if "loss" in r))
    assert [r["step"] for r in log if "val_giou" in r] == [4, 8]
    lrs = [r["lr"] for r in log if "lr" in r]
    # Linear warm-up over 2 steps, then linear decay to zero after the last step.
    assert lrs[:2] == pytest.approx([1.5e-4, 3e-4]) and lrs[-1] == pytest.approx(3e-4 / 6)
    assert lrs[2] == pytest.approx(3e-4) and all(a > b for a, b in zip(lrs[2:], lrs[3:]))
    assert (run / "curves.png").stat().st_size > 1000
    assert list((run / "tensorboard").glob("events.out.tfevents*"))
    model = SegTokenModel.from_pretrained(run / "checkpoints" / "step_000008")
    assert model.config.lora_r == 4
    out = tmp_path / "eval"
    proc = run_cli("evaluate", "--model", run / "checkpoints" / "step_000008", "--dataset", "reason_seg:val",
                   "--dataset-dir", setup / "data", "--out", out, "--max-new-tokens", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 1 and set(metrics) >= {"giou", "ciou", "short_query", "long_query"}
    line = json.loads((out / "predictions.jsonl").read_text())
    assert line["image"] == "street" and line["query"] == "What would stop traffic?"
    assert (out / "summary.png").stat().st_size > 1000


def _run_until(args, path):
    """Start `vlmsam train` and SIGKILL it as soon as ``path`` exists (no wall-clock deadline: a run that
    ends without writing ``path`` is the failure)."""
    proc = subprocess.Popen([sys.executable, "-m", "vlmsam", "train", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training ended before {path.name}: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc


def test_resume_after_sigkill_is_exact(setup, tmp_path):
    common = {"train.steps_per_epoch": 12, "train.epochs": 1, "train.save_every": 3, "train.batch_size": 3,
              "train.grad_accumulation_steps": 2, "eval.val_dataset": "", "train.keep_last": 10}
    full = tmp_path / "full"
    assert run_cli("train", *overrides(setup, full, **common)).returncode == 0
    cut = tmp_path / "cut"
    _run_until(overrides(setup, cut, **common), cut / "checkpoints" / "step_000006")
    done = ckpt.list_checkpoints(cut)
    assert done and done[-1].name != "step_000012"  # really interrupted
    proc = run_cli("train", *overrides(setup, cut, **common), "--resume", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = weights(full / "checkpoints" / "step_000012"), weights(cut / "checkpoints" / "step_000012")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    state_a = ckpt.load_trainer_state(full / "checkpoints" / "step_000012")
    state_b = ckpt.load_trainer_state(cut / "checkpoints" / "step_000012")
    assert state_a["consumed"] == state_b["consumed"] == 12 * 6
    steps = [json.loads(x)["step"] for x in (cut / "log.jsonl").read_text().splitlines() if "loss" in json.loads(x)]
    assert steps == sorted(set(steps))  # the resumed log holds each step once


def test_a_used_run_directory_is_not_mixed_with_another_run(setup, tmp_path):
    common = {"train.steps_per_epoch": 4, "train.save_every": 2, "eval.val_dataset": ""}
    run = tmp_path / "run"
    assert run_cli("train", *overrides(setup, run, **common)).returncode == 0
    again = run_cli("train", *overrides(setup, run, **common))
    assert again.returncode == 2 and "already holds a run" in again.stderr and "Traceback" not in again.stderr
    other = run_cli("train", *overrides(setup, run, **{**common, "train.lr": 1e-2}), "--resume", "auto")
    assert other.returncode == 2 and "train.lr" in other.stderr and "another config" in other.stderr
    old = {c.name: (c.stat().st_ino, c.stat().st_mtime_ns) for c in ckpt.list_checkpoints(run)}
    fresh = run_cli("train", *overrides(setup, run, **{**common, "train.steps_per_epoch": 2}), "--overwrite")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    new = {c.name: (c.stat().st_ino, c.stat().st_mtime_ns) for c in ckpt.list_checkpoints(run)}
    assert new and not set(new.items()) & set(old.items())  # none of the old run's checkpoints is kept
    assert TrainConfig.load(run / "config.yaml").train.steps_per_epoch == 2


def test_kill_during_checkpoint_write_keeps_the_previous_one(setup, tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert run_cli("train", *overrides(setup, run, **{"train.epochs": 1, "eval.val_dataset": ""})).returncode == 0
    previous = ckpt.list_checkpoints(run)[-1]
    model = SegTokenModel.from_pretrained(previous)

    def killed(*args, **kwargs):  # the process dies after the model files, before the trainer state
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(run, 99, model, {}, "", keep_last=1, best_step=None)
    monkeypatch.undo()
    assert (run / "checkpoints" / "step_000099.tmp").is_dir()
    assert ckpt.find_resume(run, "auto") == previous
    assert ckpt.list_checkpoints(run)[-1] == previous
    SegTokenModel.from_pretrained(previous)  # still loadable
    ckpt.save_checkpoint(run, 100, model, {"x": torch.zeros(1)}, "", keep_last=1, best_step=None)
    assert ckpt.find_resume(run, "auto").name == "step_000100"


def test_the_model_section_is_chosen_by_model_type():
    from vlmsam.seg_token import SegTokenConfig

    cfg = TrainConfig.load(None, ["model.model_type=seg_token", "model.lora_r=4"])
    assert cfg.model_type == "seg_token" and isinstance(cfg.model, SegTokenConfig) and cfg.model.lora_r == 4
    assert TrainConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match="model.model_type: unknown segmenter 'grounding_dino'"):
        TrainConfig.load(None, ["model_type=grounding_dino"])


def test_every_boolean_option_switches_both_ways():
    cfg = TrainConfig()
    bools = [(s, f.name) for s in TrainConfig.SECTIONS for f in dataclasses.fields(getattr(cfg, s))
             if isinstance(getattr(getattr(cfg, s), f.name), bool)]
    assert len(bools) >= 10
    for section, name in bools:
        for value in (True, False):
            loaded = TrainConfig.load(None, [f"{section}.{name}={str(value).lower()}"])
            assert getattr(getattr(loaded, section), name) is value
            if name != "progress":  # the short form too, where unambiguous
                assert getattr(getattr(TrainConfig.load(None, [f"{name}={value}"]), section), name) is value
    with pytest.raises(ConfigError, match="must be true or false"):
        TrainConfig.load(None, ["use_lora=maybe"])
    with pytest.raises(ConfigError, match="not a config key"):
        TrainConfig.load(None, ["learning_rate=1"])


def test_switches_reach_the_run(setup, tmp_path):
    """A real run with every model switch flipped from its default: the saved config and the trained
    checkpoint show the flip."""
    run = tmp_path / "run"
    flips = {"model.use_lora": False, "model.train_lm_head": False, "model.train_embed_tokens": False,
             "model.train_vision_tower": True, "model.train_sam_prompt_encoder": True, "model.train_sam_mask_decoder": False,
             "train.gradient_checkpointing": True, "train.epochs": 1, "train.steps_per_epoch": 2, "eval.val_dataset": ""}
    proc = run_cli("train", *overrides(setup, run, **flips))
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = TrainConfig.load(run / "config.yaml")
    for key, value in flips.items():
        section, name = key.split(".")
        assert getattr(getattr(saved, section), name) == value
    last = ckpt.list_checkpoints(run)[-1]
    keys = load_file(str(last / "trainable.safetensors")).keys()
    assert not (last / "adapter").exists()
    assert any(k.startswith("vision_tower.") for k in keys) and any(k.startswith("sam_prompt_encoder.") for k in keys)
    assert not any(k.startswith(("lm_head.", "embed_tokens.", "sam_mask_decoder.")) for k in keys)


def test_gradient_checkpointing_really_recomputes(setup):
    from vlmsam.data import Sample
    import numpy as np

    counts = {}
    for flag in (False, True):
        cfg = TrainConfig.load(None, overrides(setup, setup / "unused"))
        model = SegTokenModel.build(cfg.model)
        set_gradient_checkpointing(model.vlm, flag)
        model.train()
        # transformers re-runs the layer's forward (not its __call__) when it recomputes, and torch
        # stops recomputing once it has what backward needs: watch the layer's first module.
        norm = model._base_vlm().model.language_model.layers[0].input_layernorm
        calls = []
        norm.register_forward_pre_hook(lambda *a: calls.append(1))
        img = np.zeros((40, 40, 3), np.uint8)
        model([Sample(img, [[("segment it", "[SEG].")]], np.zeros((1, 40, 40), np.uint8))]).loss.backward()
        counts[flag] = len(calls)
    assert counts == {False: 1, True: 2}  # the layer runs again during backward


def test_bad_config_is_a_user_error(setup, tmp_path):
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    for args, words in [((tmp_path / "bad.yaml",), "not valid YAML"), ((tmp_path / "none.yaml",), "no such config file"),
                        (("train.lr=fast",), "train.lr must be a number"),
                        (("model.vlm=/nonexistent", f"data.dataset_dir={setup / 'data'}", f"train.run_dir={tmp_path / 'r'}"), "/nonexistent"),
                        ((*overrides(setup, tmp_path / "r2"), "--resume", tmp_path), "not a training checkpoint")]:
        proc = run_cli("train", *args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert words in proc.stderr, proc.stderr
    with pytest.raises(CheckpointError):
        ckpt.find_resume(tmp_path, str(tmp_path))


def test_sam_embedding_cache_is_filled_once_and_changes_nothing(setup, tmp_path):
    cache = tmp_path / "cache"
    extra = {"train.epochs": 1, "eval.val_dataset": ""}
    plain = tmp_path / "plain"
    assert run_cli("train", *overrides(setup, plain, **extra)).returncode == 0
    cached = tmp_path / "cached"
    proc = run_cli("train", *overrides(setup, cached, **extra, **{"train.sam_embedding_cache": cache}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    from vlmsam.data.registry import build_family

    images = {str(ds.image_path(i)) for f, spec in [("reason_seg", None), ("refer_seg", "refcoco"), ("sem_seg", None), ("vqa", None)]
              for ds in build_family(f, setup / "data", spec) for i in range(len(ds))}
    entries = sorted(cache.glob("*.safetensors"))
    assert len(entries) == len(images) > 5
    stamps = [e.stat().st_mtime_ns for e in entries]
    assert run_cli("train", *overrides(setup, tmp_path / "again", **extra, **{"train.sam_embedding_cache": cache})).returncode == 0
    assert [e.stat().st_mtime_ns for e in sorted(cache.glob("*.safetensors"))] == stamps  # nothing recomputed
    losses = lambda run: [json.loads(x)["loss"] for x in (run / "log.jsonl").read_text().splitlines()]  # noqa: E731
    assert losses(cached) == pytest.approx(losses(plain), rel=1e-4)
    proc = run_cli("train", *overrides(setup, tmp_path / "x", **extra, **{"train.sam_embedding_cache": cache,
                                                                         "model.train_sam_image_encoder": True}))
    assert proc.returncode == 2 and "needs a frozen SAM image encoder" in proc.stderr


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        cfg = TrainConfig.load(path)
        assert cfg.train.run_dir and cfg.data.datasets


def test_deepspeed_config_takes_batch_precision_and_clipping_from_ours(tmp_path):
    from pathlib import Path

    from vlmsam.train.deepspeed_engine import ds_config

    repo = Path(__file__).parent.parent
    cfg = TrainConfig.load(repo / "configs" / "full_finetune_7b_zero3.yaml", [f"deepspeed={repo / 'configs' / 'deepspeed_zero3.json'}"])
    conf = ds_config(cfg, world_size=8)
    assert conf["train_batch_size"] == 1 * 16 * 8 and conf["gradient_accumulation_steps"] == 16
    assert conf["bf16"]["enabled"] and not conf["fp16"]["enabled"] and conf["zero_optimization"]["stage"] == 3
    assert "optimizer" not in conf and "scheduler" not in conf
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4}))
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu=4 disagrees"):
        ds_config(TrainConfig.load(None, [f"deepspeed={bad}", "batch_size=2"]), 1)


@pytest.mark.gpu
def test_deepspeed_zero2_run_and_resume_on_gpu(setup, tmp_path):
    pytest.importorskip("deepspeed")
    from pathlib import Path

    ds = Path(__file__).parent.parent / "configs" / "deepspeed_zero2.json"
    run = tmp_path / "run"
    args = overrides(setup, run, **{"train.deepspeed": ds, "train.precision": "bf16", "train.epochs": 1, "eval.val_dataset": ""})
    proc = run_cli("train", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = ckpt.list_checkpoints(run)[-1]
    assert (last / "deepspeed").is_dir()
    SegTokenModel.from_pretrained(last)


def test_stop_at_step_ends_early_on_the_same_schedule(setup, tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", *overrides(setup, run, **{"train.epochs": 1, "eval.val_dataset": "", "train.stop_at_step": 3}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert log[-1]["lr"] == pytest.approx(3e-4 * (4 - 2) / (4 - 2))  # still the 4-step schedule
    assert not (run / "curves.png").exists()  # the run is not finished
    assert ckpt.list_checkpoints(run)[-1].name == "step_000003"  # but where it stopped is saved


def test_init_from_starts_a_fresh_run_from_trained_weights(setup, tmp_path):
    """``train.init_from``: a new run (its own schedule and optimizer) whose weights start as another run's
    checkpoint left them; with lr 0 they are still exactly those after a step, LoRA adapter included."""
    first = tmp_path / "first"
    proc = run_cli("train", *overrides(setup, first, **{"train.epochs": 1, "eval.val_dataset": "", "train.stop_at_step": 2}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    source = ckpt.list_checkpoints(first)[-1]
    second = tmp_path / "second"
    proc = run_cli("train", *overrides(setup, second, **{"train.epochs": 1, "eval.val_dataset": "", "train.stop_at_step": 1,
                                                          "train.init_from": source, "train.lr": 0.0}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"starting from the trained weights of {source}" in proc.stdout
    log = [json.loads(x) for x in (second / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1]  # a run of its own, not a resumption at step 3
    started, trained = weights(ckpt.list_checkpoints(second)[-1]), weights(source)
    assert started.keys() == trained.keys()
    assert all(torch.equal(started[k], trained[k]) for k in trained)
    fresh = tmp_path / "fresh"
    proc = run_cli("train", *overrides(setup, fresh, **{"train.epochs": 1, "eval.val_dataset": "", "train.stop_at_step": 1,
                                                         "train.lr": 0.0}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    untouched = weights(ckpt.list_checkpoints(fresh)[-1])
    assert not all(torch.equal(untouched[k], trained[k]) for k in trained)  # the test can tell the two apart
    bad = run_cli("train", *overrides(setup, tmp_path / "bad", **{"train.init_from": tmp_path / "nowhere"}))
    assert bad.returncode == 2 and "train.init_from" in bad.stderr and "Traceback" not in bad.stderr
