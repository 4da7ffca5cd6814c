"""Tool tags -> Grounding DINO -> SAM (gsam), the detector-only baseline (grounded), and the LLaVA-Plus
converter, on tiny real models (transformers' GroundingDinoForObjectDetection, Qwen2.5-VL, SAM)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from tests.helpers.forcing import force_text
from tests.conftest import run_cli
from tests.helpers.tiny_segmenters import grounded as build_grounded
from tests.helpers.tiny_segmenters import gsam as build_gsam
from vlmsam.gsam.segmenter import tool_phrases



@pytest.fixture
def image():
    img = np.full((60, 80, 3), 90, np.uint8)
    img[10:30, 20:50] = (230, 30, 30)
    return img


def test_tool_phrases():
    assert tool_phrases("Sure. <gsam>airplane</gsam>") == ["airplane"]
    assert tool_phrases("<gsam> red cup </gsam> and <gsam>plate</gsam><gsam> </gsam>") == ["red cup", "plate"]
    assert tool_phrases("no tags here") == [] and tool_phrases("<gsam>unclosed") == []


def test_grounded_equals_detector_then_sam(tmp_path, image):
    seg = build_grounded(tmp_path)
    encoded = seg.encode(image)
    result = seg.segment(encoded, "the red square")
    found = seg.detector.detect(Image.fromarray(image), "the red square", box_threshold=0.0, text_threshold=0.0)
    assert result.num_masks == len(found.boxes) > 0
    np.testing.assert_allclose(result.boxes, found.boxes[: result.num_masks], atol=1e-4)
    pred = seg.sam.predict(boxes=found.boxes, multimask_output=True, embedding=encoded.sam).best()
    assert np.array_equal(result.masks, pred.masks[:, 0].numpy())
    seg.box_threshold = 1.01  # nothing passes
    try:
        empty = seg.segment(encoded, "the red square")
    finally:
        seg.box_threshold = 0.0
    assert empty.num_masks == 0 and "thresholds" in empty.info["reason"]


def test_gsam_acts_on_the_vlms_tags(tmp_path, image):
    seg = build_gsam(tmp_path)
    encoded = seg.encode(image)
    p = seg.vlm.processor
    answer = "Sure. <gsam>red square</gsam>"
    force = force_text(p, answer)
    result = seg.segment(encoded, "Can you segment the red square in this image?", logits_processor=force, max_new_tokens=64)
    assert result.text == answer and result.info["phrases"] == ["red square"] and result.num_masks > 0
    alone = seg.detector.detect(Image.fromarray(image), "red square", box_threshold=0.0, text_threshold=0.0)
    assert result.num_masks == len(alone.boxes)
    force = force_text(p, "I see no square.")
    none = seg.segment(encoded, "x", logits_processor=force, max_new_tokens=64)
    assert none.num_masks == 0 and "no <gsam> tag" in none.info["reason"]


def test_convert_llava_plus(tmp_path):
    entries = [
        {"id": "a", "image": "000000000009.jpg", "conversations": [
            {"from": "human", "value": "<image>\nCan you segment the dog?"},
            {"from": "gpt", "value": "thoughts🤔 ...", "actions": [{"API_name": "grounding_dino+sam", "API_params": {"caption": "dog"}}]},
            {"from": "human", "value": "grounding_dino+sam model outputs: {...}\n\nPlease summarize"},
            {"from": "gpt", "value": "There is a dog.", "actions": []}]},
        {"id": "b", "image": "000000000010.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A cat.", "actions": []}]},
        {"id": "c", "conversations": []},
        "garbage",
    ]
    src = tmp_path / "llava_plus.json"
    src.write_text(json.dumps(entries))
    out = tmp_path / "data" / "llava_dataset" / "gsam.json"
    proc = run_cli("data", "convert-llava-plus", src, out, "--image-root", tmp_path / "data" / "coco" / "train2017")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 1 conversations" in proc.stdout and "1 no segmentation call" in proc.stdout and "1 malformed" in proc.stdout
    converted = json.loads(out.read_text())
    assert converted[0]["conversations"] == [{"role": "user", "content": "Can you segment the dog?"},
                                             {"role": "assistant", "content": "<gsam>dog</gsam>"}]
    # ... which training reads as VQA data
    from vlmsam.data.vqa import VqaDataset

    (tmp_path / "data" / "coco" / "train2017").mkdir(parents=True)
    Image.new("RGB", (20, 10)).save(tmp_path / "data" / "coco" / "train2017" / "000000000009.jpg")
    sample = VqaDataset(tmp_path / "data", "gsam.json").load(0, random.Random(0))
    assert sample.conversations == [[("Can you segment the dog?", "<gsam>dog</gsam>")]]
    bad = run_cli("data", "convert-llava-plus", tmp_path / "missing.json", out, "--image-root", tmp_path)
    assert bad.returncode == 2 and "no such file" in bad.stderr and "Traceback" not in bad.stderr
