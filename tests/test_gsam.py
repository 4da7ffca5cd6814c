"""Tool tags -> Grounding DINO -> SAM (gsam), the detector-only baseline (grounded), and the LLaVA-Plus
converter, on tiny real models (transformers' GroundingDinoForObjectDetection, Qwen2.5-VL, SAM).

Expected detections and masks are computed without our detector adapter or SAM backend: Grounding
DINO's raw output read by hand (``tests/helpers/dino_reference.py``) and transformers' ``SamModel``
on the published SAM recipe (``tests/helpers/sam_reference.py``), with the boxes put into SAM's input
frame here (the 80x60 image becomes 64x48 for the tiny SAM: every coordinate times 0.8)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.helpers.dino_reference import by_box, dino_reference
from tests.helpers.forcing import force_text
from tests.helpers.sam_reference import assert_masks_match, best_of, sam_reference
from tests.helpers.tiny_segmenters import gsam as build_gsam
from vlmsam.engine.registry import design
from vlmsam.engine.spec import BuildSpec
from vlmsam.gsam.segmenter import tool_phrases

SAM_SCALE = 64 / 80  # the tiny SAM's input side over the image's longest side


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: conftest.one_thread


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("gsam")


@pytest.fixture(scope="module")
def gsam(root):
    return build_gsam(root)  # base models saved in root/vlm, root/gd, root/sam


@pytest.fixture(scope="module")
def grounded(gsam, root):
    """The detector-only design, built by the registry from the same saved detector and SAM."""
    seg = design("grounded")(BuildSpec(sam=str(root / "sam"), detector=str(root / "gd")))
    seg.box_threshold = seg.text_threshold = 0.0  # a random detector scores low
    return seg


@pytest.fixture(scope="module")
def image():
    img = np.full((60, 80, 3), 90, np.uint8)
    img[10:30, 20:50] = (230, 30, 30)
    return img


def expected(seg, image, text):
    """``(boxes, detector scores, mask logits, SAM scores)`` of ``text`` (as the detector reads it: lower
    case, a final period), every query of the detector best first; boxes under a pixel wide or high
    dropped (the segmenters' rule); each box through SAM, best of three by predicted IoU."""
    boxes, scores = dino_reference(seg.detector.model, seg.detector.processor, image, text)
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    boxes, scores = boxes[keep], scores[keep]
    logits, iou = best_of(*sam_reference(seg.sam.model, image, boxes=boxes * SAM_SCALE))
    return boxes, scores, logits, iou


def assert_same_detections(result, want, rows=slice(None)):
    """``result``'s ``rows`` hold the detections and masks ``want`` (from :func:`expected`); equal
    detector scores may be ranked either way, so rows are matched by their boxes."""
    boxes, scores, logits, iou = want
    det = np.asarray(result.info["detector_scores"])[rows]
    assert len(result.boxes[rows]) == len(det) == len(boxes) > 0
    got, ref = by_box(result.boxes[rows]), by_box(boxes)
    np.testing.assert_allclose(result.boxes[rows][got], boxes[ref], atol=1e-4)
    np.testing.assert_allclose(det[got], scores[ref], atol=1e-4)
    assert np.all(np.diff(det) <= 0)  # best first
    assert_masks_match(result.masks[rows][got], logits[ref])
    np.testing.assert_allclose(result.scores[rows][got], iou[ref], atol=1e-5)


def test_tool_phrases():
    assert tool_phrases("Sure. <gsam>airplane</gsam>") == ["airplane"]
    assert tool_phrases("<gsam> red cup </gsam> and <gsam>plate</gsam><gsam> </gsam>") == ["red cup", "plate"]
    assert tool_phrases("no tags here") == [] and tool_phrases("<gsam>unclosed") == []


def test_grounded_equals_detector_then_sam(grounded, image):
    encoded = grounded.encode(image)
    result = grounded.segment(encoded, "The red square")
    want = expected(grounded, image, "the red square.")
    assert result.num_masks == len(want[0])
    assert_same_detections(result, want)
    # the text matters: without its final period the detector puts its boxes elsewhere
    model, processor = grounded.detector.model, grounded.detector.processor
    bare, _ = dino_reference(model, processor, image, "the red square")
    full, _ = dino_reference(model, processor, image, "the red square.")
    assert not np.allclose(bare[by_box(bare)], full[by_box(full)], atol=1)
    # a box threshold keeps the detections scoring above it
    scores = want[1]
    threshold = float((scores[2] + scores[3]) / 2)
    some = grounded.segment(encoded, "The red square", box_threshold=threshold)
    assert some.num_masks == int((scores > threshold).sum()) > 0
    assert some.num_masks < result.num_masks
    grounded.box_threshold = 1.01  # nothing passes
    try:
        empty = grounded.segment(encoded, "The red square")
    finally:
        grounded.box_threshold = 0.0
    assert empty.num_masks == 0 and "thresholds" in empty.info["reason"]


def test_gsam_acts_on_the_vlms_tags(gsam, image):
    encoded = gsam.encode(image)
    p = gsam.vlm.processor
    answer = "Sure. <gsam>red square</gsam> and <gsam>blue circle</gsam>"
    result = gsam.segment(encoded, "Can you segment the red square in this image?", logits_processor=force_text(p, answer),
                          max_new_tokens=64)
    assert result.text == answer and result.info["phrases"] == ["red square", "blue circle"]
    # each phrase to the detector on its own, their detections one after the other
    red, blue = expected(gsam, image, "red square."), expected(gsam, image, "blue circle.")
    n = len(red[0])
    assert result.num_masks == n + len(blue[0])
    assert_same_detections(result, red, slice(0, n))
    assert_same_detections(result, blue, slice(n, None))
    none = gsam.segment(encoded, "x", logits_processor=force_text(p, "I see no square."), max_new_tokens=64)
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
