"""`vlmsam segment`, `vlmsam chat` (driven through a real pipe) and `load_segmenter`, on a tiny
checkpoint the tests save themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import run_cli
from vlmsam.sam.tiny import build_tiny_sam
from vlmsam.seg_token import SegTokenConfig, SegTokenModel
from vlmsam.vlm.tiny import save_tiny_vlm


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("segment")
    build_tiny_sam().save_pretrained(root / "sam")
    vlm = save_tiny_vlm(root / "vlm", "qwen2_5_vl")
    torch.manual_seed(0)
    model = SegTokenModel.build(SegTokenConfig(vlm=str(vlm), sam=str(root / "sam"), lora_r=4))
    model.save_pretrained(root / "ckpt")
    img = np.full((60, 80, 3), 90, np.uint8)
    img[10:30, 20:50] = (230, 30, 30)
    Image.fromarray(img).save(root / "scene.png")
    return root


def test_segment_writes_outputs_and_reports(ckpt, tmp_path):
    proc = run_cli("segment", ckpt / "scene.png", "the red square", "--model", ckpt / "ckpt", "--out", tmp_path / "o",
                   "--max-new-tokens", "6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("answer: ") and lines[1].startswith("masks: ") and "time: " in lines[1]
    assert (tmp_path / "o" / "scene_overlay.jpg").is_file()
    record = json.loads((tmp_path / "o" / "scene.json").read_text())
    assert record["request"] == "the red square" and record["num_masks"] == int(lines[1].split()[1])


def test_segment_bad_input_is_one_line(ckpt, tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    cases = [
        ((ckpt / "scene.png", "   ", "--model", ckpt / "ckpt"), "the request is empty"),
        ((ckpt / "scene.png", "x" * 20000, "--model", ckpt / "ckpt"), "20,000 characters"),
        ((tmp_path / "notes.jpg", "the cup", "--model", ckpt / "ckpt"), "notes.jpg"),
        ((ckpt / "scene.png", "the cup", "--model", tmp_path / "nowhere"), "no such model directory"),
        ((ckpt / "scene.png", "the cup", "--model", ckpt / "sam"), "not a vlmsam checkpoint"),
        ((ckpt / "scene.png", "the cup", "--model", ckpt / "scene.png"), "is a file"),
    ]
    for args, words in cases:
        proc = run_cli("segment", *args, "--out", tmp_path / "o")
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert words in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()


def test_chat_through_a_pipe_keeps_the_image(ckpt, tmp_path):
    script = f"the red square\n{ckpt / 'scene.png'}\nand the background?\n\n{' '}\n"
    proc = subprocess.run([sys.executable, "-m", "vlmsam", "chat", "--model", str(ckpt / "ckpt"), "--out", str(tmp_path / "o"),
                           "--max-new-tokens", "6"], input=script, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.count("Please input your prompt (or press Enter to exit):") == 3
    assert out.count("Please input the image path or URL:") == 2
    assert out.count("answer: ") == 2
    assert (tmp_path / "o" / "scene_1_overlay.jpg").is_file() and (tmp_path / "o" / "scene_2_overlay.jpg").is_file()


def test_python_api(ckpt):
    from vlmsam import load_segmenter

    seg = load_segmenter(str(ckpt / "ckpt"), segmenter="seg_token", max_new_tokens=6)
    seg.set_image(ckpt / "scene.png")
    first = seg.segment("the red square")
    again = seg(ckpt / "scene.png", "the red square")
    assert seg.engine.encodes == 1  # the same image is encoded once
    assert first.text == again.text and first.masks.shape[1:] == (60, 80)
    from vlmsam.seg_token.segmenter import seg_prompt

    assert seg_prompt("the red square") == "What is the red square in this image? Please output segmentation mask."
    assert seg_prompt("Which shape would you use to cut bread?") == \
        "Which shape would you use to cut bread? Please output segmentation mask."
    from vlmsam.errors import CheckpointError, PromptError

    with pytest.raises(PromptError):
        seg.segment("")
    with pytest.raises(CheckpointError, match="unknown segmenter"):
        load_segmenter(str(ckpt / "ckpt"), segmenter="grounding")


def test_segment_many_images_folder_glob_and_requests_file(ckpt, tmp_path):
    from vlmsam.evaluation.evaluate import read_predictions

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, shift in (("a", 0), ("b", 5), ("c", 10)):
        img = np.full((60, 80, 3), 90, np.uint8)
        img[10 + shift:30 + shift, 20:50] = (230, 30, 30)
        Image.fromarray(img).save(folder / f"{name}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    proc = run_cli("segment", folder, str(tmp_path / "imgs" / "a*.png"), "the red square", "--model", ckpt / "ckpt",
                   "--out", tmp_path / "o", "--max-new-tokens", "6")
    assert proc.returncode == 1, proc.stderr[-2000:]  # one image could not be read; the rest were answered
    assert "broken.png" in proc.stderr and "Traceback" not in proc.stderr
    lines = [json.loads(x) for x in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()]
    assert [x["image"] for x in lines] == ["a", "b", "c", "a"] and all(x["query"] == "the red square" for x in lines)
    assert (tmp_path / "o" / "a.json").is_file() and (tmp_path / "o" / "a_2.json").is_file()
    assert len(read_predictions(tmp_path / "o" / "predictions.jsonl")[("a", "the red square")]) == 2

    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps({"image": str(folder / f"{n}.png"), "request": r}) + "\n"
                                for n, r in (("a", "the red square"), ("b", "the background"), ("a", "the grey part"))))
    proc = run_cli("segment", "--requests", requests, "--model", ckpt / "ckpt", "--out", tmp_path / "r", "--max-new-tokens", "6")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(x) for x in (tmp_path / "r" / "predictions.jsonl").read_text().splitlines()]
    assert [(x["image"], x["query"]) for x in lines] == [("a", "the red square"), ("b", "the background"), ("a", "the grey part")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a torch without CUDA")
def test_device_errors_are_one_line(ckpt, tmp_path):
    for device, words in (("cuda:0", "no CUDA device"), ("tpu", "use auto, cpu, cuda or cuda:N")):
        proc = run_cli("segment", ckpt / "scene.png", "the red square", "--model", ckpt / "ckpt", "--device", device,
                       "--out", tmp_path / "o")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("evaluate", "--dataset", "reason_seg:val", "--dataset-dir", tmp_path, "--device", "cuda", "--out", tmp_path / "e")
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr and "Traceback" not in proc.stderr
