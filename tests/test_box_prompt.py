"""The box_prompt design on tiny real models: a grounding answer (forced, so the test controls it)
goes through the parser to SAM; masks equal SAM's own for the same prompts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers.forcing import force_text
from tests.helpers.tiny_segmenters import box_prompt as build_box_prompt
from vlmsam.engine import registry



def forced(seg, text):
    return force_text(seg.vlm.processor, text)


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    s = build_box_prompt(tmp_path_factory.mktemp("bp"))
    s.max_new_tokens = 200
    return s


@pytest.fixture
def image():
    img = np.full((60, 80, 3), 90, np.uint8)
    img[10:30, 20:50] = (230, 30, 30)
    return img


def test_a_grounding_answer_becomes_sam_masks(seg, image):
    encoded = seg.encode(image)
    fw, fh = encoded.extras["model_input_size"]
    sx, sy = 80 / fw, 60 / fh
    answer = json.dumps([{"bbox_2d": [round(20 / sx), round(10 / sy), round(50 / sx), round(30 / sy)],
                          "point_2d": [round(35 / sx), round(20 / sy)], "label": "red box"},
                         {"bbox_2d": [round(55 / sx), round(35 / sy), round(75 / sx), round(55 / sy)], "label": "grey"}])
    result = seg.segment(encoded, "the red box", logits_processor=forced(seg, answer))
    assert result.text == answer and result.labels == ["red box", "grey"]
    assert result.masks.shape == (2, 60, 80) and result.scores.shape == (2,)
    np.testing.assert_allclose(result.boxes[0], [20, 10, 50, 30], atol=1.0)
    # the same prompts straight to SAM give the same masks (best of three by predicted IoU)
    from vlmsam.grounding import parse_grounding

    parsed = parse_grounding(answer, (80, 60), (fw, fh), "qwen2_5_vl")
    with_point = seg.sam.predict(boxes=parsed.boxes[:1], points=parsed.points[0][None], multimask_output=True,
                                 embedding=encoded.sam).best()
    assert np.array_equal(with_point.masks[0, 0].numpy(), result.masks[0])
    plain = seg.sam.predict(boxes=result.boxes[1:], multimask_output=True, embedding=encoded.sam).best()
    assert np.array_equal(plain.masks[0, 0].numpy(), result.masks[1])
    assert result.text.count("bbox_2d") == 2


def test_union_and_unusable_answers(seg, image):
    encoded = seg.encode(image)
    answer = '[{"bbox_2d": [2, 2, 30, 30]}, {"bbox_2d": [40, 40, 70, 70]}]'
    seg.union = True
    try:
        union = seg.segment(encoded, "both", logits_processor=forced(seg, answer))
    finally:
        seg.union = False
    assert union.masks.shape == (1, 60, 80)
    none = seg.segment(encoded, "the unicorn", logits_processor=forced(seg, "There is no unicorn in this image."))
    assert none.num_masks == 0 and "no JSON" in none.info["reason"]
    broken = seg.segment(encoded, "x", logits_processor=forced(seg, '[{"bbox_2d": [NaN, 1, 2, 3]}, {"bbox_2d": [1e30, 0, 1, 1]}]'))
    assert broken.num_masks == 0 and "object 1" in broken.info["reason"]


def test_history_stays_in_the_vlms_context(seg, image):
    encoded = seg.encode(image)
    history = [("What is this?", "A red box on grey.")]
    seg.segment(encoded, "Frame the box.", history=history, max_new_tokens=4)  # runs with the earlier turn
    ids = seg.vlm.prompt_ids(encoded.vlm, [*history, ("Frame the box.", None)])
    assert "A red box on grey." in seg.vlm.decode(ids, skip_special_tokens=False)


def test_checkpoint_names_its_design(seg, tmp_path, image):
    seg.save_pretrained(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "vlmsam_config.json").read_text())["model_type"] == "vlmsam_box_prompt"
    loaded = registry.load(tmp_path / "ckpt")
    assert loaded.name == "box_prompt" and loaded.style == "qwen2_5_vl"
    answer = '[{"bbox_2d": [2, 2, 30, 30]}]'
    a = seg.segment(seg.encode(image), "it", logits_processor=forced(seg, answer))
    b = loaded.segment(loaded.encode(image), "it", logits_processor=forced(loaded, answer))
    assert np.array_equal(a.masks, b.masks) and a.text == b.text


def test_point_prompts_and_single_masks(seg, image):
    """prompt="point", multimask off (the bundled default's settings: its SAM trained one output): an object
    with a point prompts SAM with the point alone, one without a point with its box; boxes stay in the result."""
    encoded = seg.encode(image)
    fw, fh = encoded.extras["model_input_size"]
    answer = json.dumps([{"bbox_2d": [2, 2, fw // 2, fh // 2], "point_2d": [fw // 4, fh // 4]}, {"bbox_2d": [fw // 2, fh // 2, fw - 2, fh - 2]}])
    seg.prompt, seg.multimask = "point", False
    try:
        result = seg.segment(encoded, "the red box", logits_processor=forced(seg, answer))
    finally:
        seg.prompt, seg.multimask = "box+point", True
    from vlmsam.grounding import parse_grounding

    parsed = parse_grounding(answer, (80, 60), (fw, fh), "qwen2_5_vl")
    alone = seg.sam.predict(points=parsed.points[0][None], multimask_output=False, embedding=encoded.sam)
    assert np.array_equal(alone.masks[0, 0].numpy(), result.masks[0])
    boxed = seg.sam.predict(boxes=parsed.boxes[1:], multimask_output=False, embedding=encoded.sam)
    assert np.array_equal(boxed.masks[0, 0].numpy(), result.masks[1])
    np.testing.assert_allclose(result.boxes, parsed.boxes)
    with pytest.raises(Exception, match="choose 'box\\+point' or 'point'"):
        type(seg)(seg.vlm, seg.sam, prompt="box")
