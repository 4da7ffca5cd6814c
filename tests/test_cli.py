"""The ``vlmsam`` command line in real processes: outputs on success, one line and exit 2 on user errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import run_cli
from tests.test_images import write_huge_png


def assert_user_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_sam_command_writes_outputs(tmp_path, scene_path, tiny_meta):
    out = tmp_path / "out"
    proc = run_cli("sam", scene_path, "--sam", tiny_meta[2], "--box", "50,40,200,160", "--box", "240,140,360,260", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "2 mask(s)" in proc.stdout and "overlay:" in proc.stdout
    record = json.loads((out / "scene.json").read_text())
    assert record["num_masks"] == 2 and record["boxes_xyxy"] == [[50, 40, 200, 160], [240, 140, 360, 260]]
    for name in ("scene_mask_0.png", "scene_mask_1.png", "scene_masked_img_0.jpg", "scene_overlay.jpg"):
        assert (out / name).stat().st_size > 0
    assert Image.open(out / "scene_mask_0.png").size == (420, 300)


def test_convert_then_load_gives_the_same_masks(tmp_path, scene_path, tiny_meta):
    conv = tmp_path / "sam-converted"
    proc = run_cli("convert-sam", tiny_meta[2], conv)
    assert proc.returncode == 0, proc.stderr
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in conv.iterdir()}
    a = run_cli("sam", scene_path, "--sam", tiny_meta[2], "--point", "120,100", "--point", "300,200",
                "--point-label", "1", "--point-label", "0", "--multimask", "--out", tmp_path / "a")
    b = run_cli("sam", scene_path, "--sam", conv, "--point", "120,100", "--point", "300,200",
                "--point-label", "1", "--point-label", "0", "--multimask", "--out", tmp_path / "b")
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    ma = np.asarray(Image.open(tmp_path / "a" / "scene_mask_0.png"))
    mb = np.asarray(Image.open(tmp_path / "b" / "scene_mask_0.png"))
    assert np.array_equal(ma, mb)


def test_bad_images(tmp_path, tiny_meta):
    sam = ["--sam", str(tiny_meta[2]), "--box", "1,1,5,5", "--out", str(tmp_path / "o")]
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "zero.png").write_bytes(b"")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "ok.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "ok.jpg").read_bytes()[:200])
    write_huge_png(tmp_path / "huge.png", 30000, 30000)
    assert_user_error(run_cli("sam", tmp_path / "text.jpg", *sam), "text.jpg", "not an image")
    assert_user_error(run_cli("sam", tmp_path / "zero.png", *sam), "zero.png", "0 bytes")
    assert_user_error(run_cli("sam", tmp_path / "cut.jpg", *sam), "cut.jpg", "truncated")
    assert_user_error(run_cli("sam", tmp_path / "huge.png", *sam), "huge.png", "30000x30000")
    assert_user_error(run_cli("sam", tmp_path / "absent.jpg", *sam), "absent.jpg", "no such file")
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_bad_prompts(tmp_path, scene_path, tiny_meta):
    base = ["sam", scene_path, "--sam", tiny_meta[2], "--out", tmp_path / "o"]
    assert_user_error(run_cli(*base, "--box", "200,10,100,50"), "x1 <= x2")
    assert_user_error(run_cli(*base, "--box", "900,900,1000,1000"), "outside the 420x300 image")
    assert_user_error(run_cli(*base, "--box", "1,2,3"), "expected 4 comma-separated numbers")
    assert_user_error(run_cli(*base), "give at least one --box")


def test_bad_checkpoints(tmp_path, scene_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"net.weight": torch.zeros(2)}, tmp_path / "resnet.pth")
    torch.save({"image_encoder.pos_embed": Payload()}, tmp_path / "evil.pth")
    base = ["sam", scene_path, "--box", "1,1,50,50", "--out", tmp_path / "o", "--sam"]
    assert_user_error(run_cli(*base, tmp_path / "resnet.pth"), "resnet.pth", "not a Segment Anything checkpoint")
    proc = run_cli(*base, tmp_path / "evil.pth")
    assert_user_error(proc, "evil.pth", "refused to load", "print")
    assert "pwned" not in proc.stdout
    assert_user_error(run_cli(*base, tmp_path / "sam_vit_h_4b8939.pth"), "no such file")
    assert_user_error(run_cli("convert-sam", tmp_path / "evil.pth", tmp_path / "c"), "refused to load")


def test_usage_errors_exit_2():
    proc = run_cli("sam")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "vlmsam sam: error:" in lines[0] and "--help" in lines[0], proc.stderr
