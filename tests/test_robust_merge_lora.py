"""`vlmsam merge-lora` never writes over, into or around its checkpoint, refuses a non-empty output
directory, and says so when there is no LoRA to merge (one line, exit code 2)."""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers.robust_cli import assert_one_line, cli, listing
from vlmsam.engine.registry import DEFAULT_MODEL_DIR


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from tests.helpers.tiny_segmenters import save_tiny_seg_checkpoint

    path = save_tiny_seg_checkpoint(tmp_path_factory.mktemp("merge") / "run")
    assert json.loads((path / "vlmsam_config.json").read_text())["use_lora"] and (path / "adapter").is_dir()
    return path


def test_a_checkpoint_without_lora_is_refused(tmp_path, capsys):
    assert not json.loads((DEFAULT_MODEL_DIR / "vlmsam_config.json").read_text())["use_lora"]
    rc, out, err = cli(capsys, "merge-lora", DEFAULT_MODEL_DIR, tmp_path / "merged")
    assert_one_line(rc, err, "has no LoRA adapter to merge; it is already standalone")
    assert "merged" not in out and not (tmp_path / "merged").exists()


def test_outputs_over_into_or_around_the_checkpoint_are_refused(ckpt, tmp_path, capsys):
    before = listing(ckpt.parent)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    os.symlink(ckpt, tmp_path / "alias")
    cases = [(ckpt, "is the checkpoint or inside it"), (tmp_path / "alias", "is the checkpoint or inside it"),
             (ckpt / "merged", "is the checkpoint or inside it"), (ckpt.parent, "holds the checkpoint"),
             (tmp_path / "full", "exists and is not empty")]
    for out, words in cases:
        rc, _, err = cli(capsys, "merge-lora", ckpt, out)
        assert_one_line(rc, err, words)
    assert listing(ckpt.parent) == before and (tmp_path / "full" / "notes.txt").read_text() == "mine"


def test_a_merge_into_an_empty_directory_is_a_whole_checkpoint(ckpt, tmp_path, capsys):
    out = tmp_path / "merged"
    out.mkdir()  # empty: allowed
    before = listing(ckpt.parent)
    rc, text, err = cli(capsys, "merge-lora", ckpt, out)
    assert rc == 0, err
    assert "merged LoRA" in text and listing(ckpt.parent) == before
    config = json.loads((out / "vlmsam_config.json").read_text())
    assert config["use_lora"] is False and config["vlm"] == "vlm" and config["sam"] == "sam"
    assert not (out / "adapter").exists() and not [p for p in tmp_path.iterdir() if ".merging-" in p.name]
    rc, _, err = cli(capsys, "merge-lora", out, tmp_path / "again")  # the merged checkpoint has nothing left to merge
    assert_one_line(rc, err, "already standalone")
