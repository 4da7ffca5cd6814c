"""The box_prompt design on tiny real models: a grounding answer (forced, so the test controls it)
goes through the parser to SAM.

Expected values are worked out by hand, not by running our parser or SAM backend a second time:
the answer's coordinates are turned into pixels from the documented convention (Qwen2.5-VL answers
in absolute pixels of the image as its processor resized it, DESIGN.md "Coordinates"), and the
expected masks come from transformers' ``SamModel.forward`` on pixels and prompts prepared in
``tests/helpers/sam_reference.py`` (the published SAM recipe), with prompt coordinates written out
here in SAM's input frame."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import LogitsProcessorList

from tests.helpers.forcing import force_text
from tests.helpers.prompt_recorder import RecordPrompt
from tests.helpers.sam_reference import assert_masks_match, best_of, sam_reference
from tests.helpers.tiny_segmenters import box_prompt as build_box_prompt
from vlmsam.engine import registry

# The image is 80x60 (W x H).
# Qwen2.5-VL's frame: the tiny VLM's processor resizes to min = max = 56 * 56 = 3136 pixels in
# multiples of 28 (Qwen2-VL's smart_resize). 80 * 60 = 4800 is too many: beta = sqrt(4800 / 3136),
# width floor(80 / beta / 28) * 28 = floor(2.31) * 28 = 56, height floor(60 / beta / 28) * 28 =
# floor(1.73) * 28 = 28. An answer's x therefore means x * 80 / 56 = x * 10 / 7 pixels, its y
# y * 60 / 28 = y * 15 / 7 pixels.
FRAME = (56, 28)
# SAM's input frame: the longest side 80 -> the tiny SAM's 64, so every coordinate times 0.8 (64x48).


def forced(seg, text):
    return force_text(seg.vlm.processor, text)


def compact(objects) -> str:
    """JSON without spaces: the same answer in fewer tokens, so fewer generation steps."""
    return json.dumps(objects, separators=(",", ":"))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: conftest.one_thread


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    s = build_box_prompt(tmp_path_factory.mktemp("bp"))
    s.max_new_tokens = 200
    return s


@pytest.fixture(scope="module")
def image():
    img = np.full((60, 80, 3), 90, np.uint8)
    img[15:30, 20:50] = (230, 30, 30)  # the red box: pixels x 20..50, y 15..30
    return img


@pytest.fixture(scope="module")
def encoded(seg, image):
    return seg.encode(image)


def test_the_answer_frame_is_the_resized_image(encoded):
    assert encoded.extras["model_input_size"] == FRAME


def test_a_grounding_answer_becomes_sam_masks(seg, image, encoded):
    # red box: x 14, 35 -> 20, 50 px; y 7, 14 -> 15, 30 px; its point (28, 10) -> (40, 150/7) px.
    # grey: (0, 14)-(21, 28) -> (0, 30)-(30, 60) px.
    answer = compact([{"bbox_2d": [14, 7, 35, 14], "point_2d": [28, 10], "label": "red box"},
                      {"bbox_2d": [0, 14, 21, 28], "label": "grey"}])
    result = seg.segment(encoded, "the red box", logits_processor=forced(seg, answer))
    assert result.text == answer and result.labels == ["red box", "grey"]
    assert result.masks.shape == (2, 60, 80) and result.scores.shape == (2,)
    np.testing.assert_allclose(result.boxes, [[20, 15, 50, 30], [0, 30, 30, 60]], atol=1e-4)
    # SAM, box and point together, best of three by predicted IoU; in SAM's frame (x 0.8):
    # box (16, 12)-(40, 24), point (32, 120/7); the grey box (0, 24)-(24, 48), no point.
    red, red_iou = best_of(*sam_reference(seg.sam.model, image, boxes=[[16, 12, 40, 24]], points=[[[32, 120 / 7]]]))
    grey_all = sam_reference(seg.sam.model, image, boxes=[[0, 24, 24, 48]])
    assert grey_all[1][0].argmax() != 0  # these weights rank another candidate first: the choice is checked
    grey, grey_iou = best_of(*grey_all)
    assert_masks_match(result.masks, np.concatenate([red, grey]))
    np.testing.assert_allclose(result.scores, np.concatenate([red_iou, grey_iou]), atol=1e-5)
    # the comparison can tell: the answer's numbers read as pixels (no rescaling) give another mask
    misread, _ = best_of(*sam_reference(seg.sam.model, image, boxes=[[11.2, 5.6, 28, 11.2]], points=[[[22.4, 8]]]))
    assert (result.masks[0] != (misread[0] > 0)).sum() > 100


def test_union_and_unusable_answers(seg, image, encoded):
    # (0, 0)-(21, 14) -> (0, 0)-(30, 30) px; (28, 14)-(56, 28) -> (40, 30)-(80, 60) px.
    answer = compact([{"bbox_2d": [0, 0, 21, 14]}, {"bbox_2d": [28, 14, 56, 28]}])
    seg.union = True
    try:
        union = seg.segment(encoded, "both", logits_processor=forced(seg, answer))
    finally:
        seg.union = False
    assert union.masks.shape == (1, 60, 80)
    # in SAM's frame (0, 0)-(24, 24) and (32, 24)-(64, 48); a pixel is in the union where either logit is above 0
    first, first_iou = best_of(*sam_reference(seg.sam.model, image, boxes=[[0, 0, 24, 24]]))
    second, second_iou = best_of(*sam_reference(seg.sam.model, image, boxes=[[32, 24, 64, 48]]))
    assert_masks_match(union.masks, np.maximum(first, second))
    assert (first > 0).sum() != union.masks.sum() != (second > 0).sum()  # both objects count
    np.testing.assert_allclose(union.scores, [(first_iou[0] + second_iou[0]) / 2], atol=1e-5)
    none = seg.segment(encoded, "the unicorn", logits_processor=forced(seg, "No unicorn here."))
    assert none.num_masks == 0 and "no JSON" in none.info["reason"]
    broken = seg.segment(encoded, "x", logits_processor=forced(seg, compact([{"bbox_2d": [float("nan"), 1, 2, 3]},
                                                                             {"bbox_2d": [1e30, 0, 1, 1]}])))
    assert broken.num_masks == 0 and "object 1" in broken.info["reason"] and "object 2" in broken.info["reason"]


def test_history_stays_in_the_vlms_context(seg, encoded):
    """The earlier turn is in the prompt the VLM was actually given (read by a logits processor)."""
    history = [("What is this?", "A red box on grey.")]
    seen = RecordPrompt()
    result = seg.segment(encoded, "Frame the box.", history=history,
                         logits_processor=LogitsProcessorList([seen, *forced(seg, "No.")]))
    assert result.text == "No."
    prompt = seg.vlm.processor.tokenizer.decode(seen.prompt[0], skip_special_tokens=False)
    asked, answered, now = (prompt.find(s) for s in ("What is this?", "<|im_start|>assistant\nA red box on grey.", "Frame the box."))
    assert 0 <= asked < answered < now, prompt
    seen = RecordPrompt()
    seg.segment(encoded, "Frame the box.", logits_processor=LogitsProcessorList([seen, *forced(seg, "No.")]))
    alone = seg.vlm.processor.tokenizer.decode(seen.prompt[0], skip_special_tokens=False)
    assert "Frame the box." in alone and "A red box on grey." not in alone


def test_checkpoint_names_its_design(seg, tmp_path, image, encoded):
    seg.save_pretrained(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "vlmsam_config.json").read_text())["model_type"] == "vlmsam_box_prompt"
    loaded = registry.load(tmp_path / "ckpt")
    assert loaded.name == "box_prompt" and loaded.style == "qwen2_5_vl"
    answer = compact([{"bbox_2d": [14, 7, 35, 14]}])  # (20, 15)-(50, 30) px; (16, 12)-(40, 24) in SAM's frame
    a = seg.segment(encoded, "it", logits_processor=forced(seg, answer))
    b = loaded.segment(loaded.encode(image), "it", logits_processor=forced(loaded, answer))
    expected, _ = best_of(*sam_reference(seg.sam.model, image, boxes=[[16, 12, 40, 24]]))
    assert a.text == b.text == answer
    np.testing.assert_allclose(b.boxes, [[20, 15, 50, 30]], atol=1e-4)
    assert_masks_match(a.masks, expected)
    assert_masks_match(b.masks, expected)


def test_point_prompts_and_single_masks(seg, image, encoded):
    """prompt="point", multimask off (the bundled default's settings: its SAM trained one output): an object
    with a point prompts SAM with the point alone, one without a point with its box; boxes stay in the result."""
    # (0, 0)-(28, 14) -> (0, 0)-(40, 30) px with the point (14, 7) -> (20, 15) px;
    # (28, 14)-(56, 28) -> (40, 30)-(80, 60) px.
    answer = compact([{"bbox_2d": [0, 0, 28, 14], "point_2d": [14, 7]}, {"bbox_2d": [28, 14, 56, 28]}])
    seg.prompt, seg.multimask = "point", False
    try:
        result = seg.segment(encoded, "the red box", logits_processor=forced(seg, answer))
    finally:
        seg.prompt, seg.multimask = "box+point", True
    np.testing.assert_allclose(result.boxes, [[0, 0, 40, 30], [40, 30, 80, 60]], atol=1e-4)
    # SAM's frame: the point (16, 12) alone; the box (32, 24)-(64, 48); one output each (the first)
    point, point_iou = sam_reference(seg.sam.model, image, points=[[[16, 12]]], multimask=False)
    box, box_iou = sam_reference(seg.sam.model, image, boxes=[[32, 24, 64, 48]], multimask=False)
    assert point.shape[1] == box.shape[1] == 1
    assert_masks_match(result.masks, np.concatenate([point[:, 0], box[:, 0]]))
    np.testing.assert_allclose(result.scores, np.concatenate([point_iou[:, 0], box_iou[:, 0]]), atol=1e-5)
    # the point really went alone: with its box as well SAM draws another mask
    both, _ = sam_reference(seg.sam.model, image, boxes=[[0, 0, 32, 24]], points=[[[16, 12]]], multimask=False)
    assert (result.masks[0] != (both[0, 0] > 0)).sum() > 100
    with pytest.raises(Exception, match="choose 'box\\+point' or 'point'"):
        type(seg)(seg.vlm, seg.sam, prompt="box")
