"""Bad input to every command ends in one line naming the thing, exit code 2, no traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from tests.helpers.tiny_segmenters import save_tiny_seg_checkpoint

    root = tmp_path_factory.mktemp("hostile")
    save_tiny_seg_checkpoint(root)
    vlm = root / "vlm"
    truncated = root / "truncated"
    shutil.copytree(root / "ckpt", truncated)
    data = (truncated / "trainable.safetensors").read_bytes()
    (truncated / "trainable.safetensors").write_bytes(data[: len(data) // 3])
    corrupt = root / "corrupt"
    shutil.copytree(root / "ckpt", corrupt)
    (corrupt / "vlmsam_config.json").write_text("{not json")
    bare = root / "bare_vlm"  # model weights and config only: no tokenizer, no image processor
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(vlm / name, bare / name)
    (root / "empty.pth").write_bytes(b"")
    (root / "a_file").write_text("x")
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "img.png")
    return root


CASES = [
    ("truncated safetensors", lambda r: ("segment", r / "img.png", "the cup", "--model", r / "truncated"), "trainable.safetensors"),
    ("corrupt config", lambda r: ("segment", r / "img.png", "the cup", "--model", r / "corrupt"), "vlmsam_config.json"),
    ("vlm without processor", lambda r: ("segment", r / "img.png", "the cup", "--segmenter", "box_prompt", "--vlm", r / "bare_vlm",
                                         "--sam", r / "sam"), "preprocessor_config.json"),
    ("empty .pth", lambda r: ("convert-sam", r / "empty.pth", r / "out"), "empty.pth"),
    ("evaluate --out is a file", lambda r: ("evaluate", "--model", r / "ckpt", "--dataset", "reason_seg:val", "--dataset-dir", r,
                                            "--out", r / "a_file"), "a_file"),
    ("synth --out is a file", lambda r: ("data", "synth", "--out", r / "a_file", "--n", "2"), "a_file"),
    ("segment --out is a file", lambda r: ("segment", r / "img.png", "the cup", "--model", r / "ckpt", "--out", r / "a_file"), "a_file"),
    ("cuda without cuda", lambda r: ("sam", r / "img.png", "--sam", r / "sam", "--box", "1,1,5,5", "--device", "cuda:3"), "cuda"),
    ("negative limit", lambda r: ("evaluate", "--model", r / "ckpt", "--dataset", "reason_seg:val", "--dataset-dir", r,
                                  "--out", r / "e", "--limit", "-1"), "--limit"),
    ("proposals shard size 0", lambda r: ("proposals", "--dataset-dir", r, "--datasets", "reason_seg:val", "--out", r / "p",
                                          "--sam", r / "sam", "--shard-size", "0"), "--shard-size"),
    ("serve port 0", lambda r: ("serve", "--port", "0"), "--port"),
    ("unknown segmenter", lambda r: ("evaluate", "--segmenter", "magic", "--dataset", "reason_seg:val", "--dataset-dir", r,
                                     "--out", r / "e"), "magic"),
]


@pytest.mark.parametrize("name, args, words", CASES, ids=[c[0] for c in CASES])
def test_one_line_exit_2(files, name, args, words):
    proc = run_cli(*args(files))
    assert proc.returncode == 2, (name, proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], lines


def test_a_broken_explanatory_file_is_reported_by_data_check_and_training(tmp_path):
    from tests.helpers import dataset_trees as trees

    trees.write_reason_seg(tmp_path)
    (tmp_path / "reason_seg" / "ReasonSeg" / "explanatory" / "train.json").write_text('[{"image": "kitchen.jpg", "quer')
    check = run_cli("data", "check", "--dataset-dir", tmp_path, "--datasets", "reason_seg")
    assert check.returncode == 2 and "explanatory/train.json" in check.stdout and "Traceback" not in check.stderr
    from vlmsam.data.reason_seg import ReasonSegDataset
    from vlmsam.errors import DatasetError

    with pytest.raises(DatasetError, match="explanatory/train.json"):
        ReasonSegDataset(tmp_path, "train")


def test_argument_errors_come_before_heavy_imports():
    """A bad argument is reported before torch or transformers is imported (those take seconds)."""
    import subprocess
    import sys

    probe = ("import sys\nfrom vlmsam.cli.main import main\ntry:\n    code = main(sys.argv[1:])\nexcept SystemExit as e:\n"
             "    code = e.code\nprint(code, 'torch' in sys.modules, 'transformers' in sys.modules)")
    for args in (("sam", "x.jpg", "--sam", "y", "--box", "1,2,3"), ("convert-sam", "missing.pth", "out"),
                 ("merge-lora", "missing", "out")):
        proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
        assert proc.stdout.split() == ["2", "False", "False"], (args, proc.stdout, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("sam", "x.jpg", "--sam", "y", "--box", "-50,1,2,3")
    assert proc.returncode == 2 and "--box=-50" in proc.stderr


def test_a_hub_id_without_network_is_one_line_at_once(files):
    from vlmsam.hub import hub_reachable

    if hub_reachable():
        pytest.skip("the model hub is reachable from here")
    proc = run_cli("segment", files / "img.png", "the cup", "--segmenter", "box_prompt", "--vlm", "Qwen/Qwen2.5-VL-7B-Instruct",
                   "--sam", "facebook/sam-vit-base", timeout=120)  # a guard against a hang, not a timing
    assert proc.returncode == 2 and "hub cannot be reached" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    train = run_cli("train", f"train.run_dir={files / 'r'}")  # no config: the default 7B model by hub id
    assert train.returncode == 2 and "hub cannot be reached" in train.stderr and "Traceback" not in train.stderr


def test_a_moved_checkpoint_still_loads(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from vlmsam.sam.tiny import build_tiny_sam
    from vlmsam.vlm.tiny import save_tiny_vlm

    work = tmp_path / "work"
    work.mkdir()
    build_tiny_sam().save_pretrained(work / "bases" / "sam")
    save_tiny_vlm(work / "bases" / "vlm", "qwen2_5_vl")
    # built and saved with base paths relative to the working directory, as a config file would name them
    code = ("from vlmsam.seg_token import SegTokenConfig, SegTokenModel; "
            "SegTokenModel.build(SegTokenConfig(vlm='bases/vlm', sam='bases/sam', lora_r=4)).save_pretrained('ckpt')")
    subprocess.run([sys.executable, "-c", code], cwd=work, check=True, capture_output=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    saved = json.loads((work / "ckpt" / "vlmsam_config.json").read_text())
    assert Path(saved["vlm"]).is_absolute() and Path(saved["sam"]).is_absolute()
    moved = tmp_path / "elsewhere" / "my-ckpt"
    moved.parent.mkdir()
    (work / "ckpt").rename(moved)
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "img.png")
    proc = run_cli("segment", tmp_path / "img.png", "the cup", "--model", moved, "--out", tmp_path / "o", "--max-new-tokens", "4",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
