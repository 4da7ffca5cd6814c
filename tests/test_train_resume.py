"""`--resume auto` picks only complete checkpoints (written under a temporary name, then marked
COMPLETE and renamed), and a run folder that was moved or copied resumes where it is now."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.conftest import run_cli
from tests.helpers.train_setup import overrides, write_setup
from vlmsam.errors import CheckpointError
from vlmsam.sam.tiny import build_tiny_sam
from vlmsam.train import checkpoint as ckpt
from vlmsam.train.config import TrainConfig


def _save(run, step, model):
    return ckpt.save_checkpoint(run, step, model, {"step": step, "x": torch.zeros(1)}, "train: {}\n", keep_last=5, best_step=None)


def test_auto_resume_skips_partial_checkpoints(tmp_path):
    run, model = tmp_path / "run", build_tiny_sam()
    one, two = _save(run, 1, model), _save(run, 2, model)
    assert json.loads((two / ckpt.MARKER).read_text())[ckpt.STATE_FILE] == (two / ckpt.STATE_FILE).stat().st_size
    assert ckpt.list_checkpoints(run) == [one, two] and ckpt.find_resume(run, "auto") == two

    # A write that was killed before its rename: a temporary name, even with every file in it.
    shutil.copytree(two, run / "checkpoints" / "step_000003.tmp")
    # A copy cut short: the marker is there but a file is not the size it records.
    three = shutil.copytree(two, run / "checkpoints" / "step_000004")
    weights = next(p for p in three.iterdir() if p.suffix == ".safetensors")
    weights.write_bytes(weights.read_bytes()[:100])
    # A directory without the marker (written by a kill between the files and the marker).
    four = shutil.copytree(two, run / "checkpoints" / "step_000005")
    (four / ckpt.MARKER).unlink()
    assert ckpt.list_checkpoints(run) == [one, two] and ckpt.find_resume(run, "auto") == two
    assert "not the size" in ckpt.incomplete_reason(three) and "no COMPLETE marker" in ckpt.incomplete_reason(four)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        ckpt.find_resume(run, str(three))  # named explicitly, a cut-short copy is refused too
    assert ckpt.find_resume(run, str(four)) == four  # one without a marker at all is taken when named

    for good in (one, two):
        (good / ckpt.MARKER).unlink()
    with pytest.raises(CheckpointError, match="no COMPLETE marker.*--resume PATH"):
        ckpt.find_resume(run, "auto")  # nothing complete: say so rather than start a new run over it


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return write_setup(tmp_path_factory.mktemp("train"))


def test_a_moved_run_resumes_where_it_is_now(setup, tmp_path):
    common = {"train.epochs": 1, "train.save_every": 2, "eval.val_dataset": ""}
    old = tmp_path / "old"
    assert run_cli("train", *overrides(setup, old, **common, **{"train.stop_at_step": 2})).returncode == 0
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(old, moved)

    # Its own config.yaml, given from the new place: the run continues there.
    proc = run_cli("train", moved / "config.yaml", "train.stop_at_step=0", "--resume", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"moved or copied from {old} to {moved}" in proc.stdout and "resumed from" in proc.stdout
    assert not old.exists()  # nothing was started at the old place
    assert [p.name for p in ckpt.list_checkpoints(moved)][-1] == "step_000004"
    log = [json.loads(x) for x in (moved / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    assert any("moved or copied" in r.get("note", "") for r in log)
    assert TrainConfig.load(moved / "config.yaml").train.run_dir == str(moved)

    # A copy resumes too, from a checkpoint named explicitly whatever train.run_dir says.
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    last = copy / "checkpoints" / "step_000004"
    proc = run_cli("train", *overrides(setup, tmp_path / "somewhere", **common), "--resume", last)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming the run in {copy}" in proc.stdout and not (tmp_path / "somewhere").exists()


def test_hostile_configs_are_one_config_error(tmp_path):
    from vlmsam.train.config import ConfigError

    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 100_000)
    fifo = tmp_path / "fifo.yaml"
    __import__("os").mkfifo(fifo)
    for path, words in [(deep, "nested too deeply"), (fifo, "not a regular file")]:
        with pytest.raises(ConfigError, match=words):
            TrainConfig.load(path)
    for value, words in [("[" * 5000, "nested too deeply"), ("[1", "not valid YAML")]:
        with pytest.raises(ConfigError, match=words):
            TrainConfig.load(None, [f"train.lr={value}"])
    proc = run_cli("train", "train.lr=" + "[" * 5000)  # a name too long to be a config file: an override
    assert proc.returncode == 2 and "nested too deeply" in proc.stderr and "Traceback" not in proc.stderr
