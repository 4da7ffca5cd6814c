"""``vlmsam data check`` in real processes, on fixture trees with planted problems."""

from __future__ import annotations

import pickle

import numpy as np
from PIL import Image

from tests.conftest import run_cli
from tests.helpers import dataset_trees as trees


def test_clean_tree_passes(tmp_path):
    trees.write_all(tmp_path)
    proc = run_cli("data", "check", "--dataset-dir", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("reason_seg:train", "reason_seg:val", "refcoco:val", "refcocog:train", "ade20k:train", "cocostuff:train",
                 "mapillary:train", "paco_lvis:train", "pascal_part:train", "llava_instruct_150k:train", "seg++/caption:train"):
        assert name in proc.stdout
    assert "all datasets usable" in proc.stdout


def test_planted_problems_are_listed_with_paths(tmp_path):
    trees.write_all(tmp_path)
    rs = tmp_path / "reason_seg" / "ReasonSeg" / "train"
    (rs / "empty.jpg").unlink()  # missing image
    (rs / "kitchen.jpg").write_bytes((rs / "kitchen.jpg").read_bytes()[:200])  # truncated image
    (rs / "desk.json").write_text('{"text": ["x"], "shapes": [{"points": [[1, 2]]}]}')  # shape without label
    ade = tmp_path / "ade20k" / "annotations" / "training" / "ADE_train_00000001.png"
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(ade)  # label map of the wrong size

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "refer_seg" / "refcocog" / "refs(umd).p").write_bytes(pickle.dumps([Evil()]))
    proc = run_cli("data", "check", "--dataset-dir", tmp_path)
    out = proc.stdout
    assert proc.returncode == 2, out + proc.stderr
    assert "pwned" not in out
    row = next(line for line in out.splitlines() if line.startswith("reason_seg:train"))
    assert row.split()[1:5] == ["3", "1", "1", "1"] and row.endswith("PROBLEMS")
    assert f"{rs / 'empty.jpg'}: not found" in out
    assert f"{rs / 'kitchen.jpg'}: " in out
    assert f"{rs / 'desk.json'}: shape 0 lacks a label" in out
    assert f"{ade}: label map is 5x5 but the image is 32x24" in out
    assert "refs(umd).p: the pickle holds more than plain data" in out
    assert next(line for line in out.splitlines() if line.startswith("reason_seg:val")).endswith("ok")


def test_named_family_that_is_absent_fails(tmp_path):
    trees.write_vqa(tmp_path)
    proc = run_cli("data", "check", "--dataset-dir", tmp_path, "--datasets", "vqa,sem_seg", "--sem-seg-data", "ade20k")
    assert proc.returncode == 2
    assert "ade20k:train" in proc.stdout and "NOT FOUND" in proc.stdout
    assert "llava_instruct_150k:train" in proc.stdout


def test_user_errors_are_one_line(tmp_path):
    for args, words in [
        (("--dataset-dir", tmp_path / "nope"), "no such dataset directory"),
        (("--dataset-dir", tmp_path), "no dataset of a known layout found"),
        (("--dataset-dir", tmp_path, "--datasets", "imagenet"), "unknown dataset family 'imagenet'"),
    ]:
        proc = run_cli("data", "check", *args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr, proc.stderr
