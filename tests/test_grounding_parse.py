"""The grounding parser on a table of real-looking answers, well- and ill-formed."""

from __future__ import annotations

import numpy as np
import pytest

from vlmsam.grounding import parse_grounding

IMAGE = (640, 480)  # original (width, height)
RESIZED = (644, 476)  # what Qwen2.5-VL's processor made of it (multiples of 28)
SX, SY = 640 / 644, 480 / 476

CASES = [
    # (answer, convention, expected boxes in original pixels, expected labels, points per object, reason contains)
    ('[{"bbox_2d": [100, 50, 300, 200], "label": "cat"}]', "qwen2_5_vl",
     [[100 * SX, 50 * SY, 300 * SX, 200 * SY]], ["cat"], [0], ""),
    ('```json\n[\n  {"bbox_2d": [10, 20, 110, 220], "point_2d": [60, 120], "label": "dog"},\n'
     '  {"bbox_2d": [300, 100, 400, 300], "label": "dog"}\n]\n```', "qwen2_5_vl",
     [[10 * SX, 20 * SY, 110 * SX, 220 * SY], [300 * SX, 100 * SY, 400 * SX, 300 * SY]], ["dog", "dog"], [1, 0], ""),
    ('{"bbox_2d": [100, 50, 300, 200], "label": "one"}', "qwen2_5_vl", [[100 * SX, 50 * SY, 300 * SX, 200 * SY]], ["one"], [0], ""),
    ("<think>The knife is on the left.</think><answer>[{\"bbox_2d\": [12, 30, 90, 160], \"point_2d\": [50, 100]}]</answer>",
     "qwen2_5_vl", [[12 * SX, 30 * SY, 90 * SX, 160 * SY]], [""], [1], ""),
    ('[{"bbox_2d": [300, 200, 100, 50]}]', "qwen2_5_vl", [[100 * SX, 50 * SY, 300 * SX, 200 * SY]], [""], [0], ""),  # swapped
    ('[{"bbox_2d": [-20, -10, 700, 500]}]', "qwen2_5_vl", [[0, 0, 640, 480]], [""], [0], ""),  # clamped
    ('[{"bbox_2d": [500, 500, 900, 900], "label": "sky"}]', "qwen3_vl", [[320, 240, 576, 432]], ["sky"], [0], ""),
    ("<ref>飞机</ref><box>(343,119),(714,261)</box>", "qwen_vl", [[343 * 0.64, 119 * 0.48, 714 * 0.64, 261 * 0.48]], ["飞机"], [0], ""),
    ("<ref>cups</ref><box>(0,0),(100,100)</box><box>(500,500),(600,700)</box>", "qwen_vl",
     [[0, 0, 64, 48], [320, 240, 384, 336]], ["cups", "cups"], [0, 0], ""),
    # ill-formed
    ("I cannot see any knife in this image.", "qwen2_5_vl", [], [], [], "no JSON"),
    ("", "qwen2_5_vl", [], [], [], "empty answer"),
    ('[{"box": "left"}]', "qwen2_5_vl", [], [], [], "not four finite numbers"),
    ('[{"bbox_2d": [1, 2, 3]}]', "qwen2_5_vl", [], [], [], "not four finite numbers"),
    ('[{"bbox_2d": ["a", 2, 3, 4]}]', "qwen2_5_vl", [], [], [], "not four finite numbers"),
    ('[{"bbox_2d": [NaN, 2, 30, 40]}]', "qwen2_5_vl", [], [], [], "not four finite numbers"),
    ('[{"bbox_2d": [1e30, 2, 30, 40]}]', "qwen2_5_vl", [], [], [], "far outside"),
    ('[{"bbox_2d": [50, 50, 50, 80]}]', "qwen2_5_vl", [], [], [], "degenerate"),
    ('[{"bbox_2d": [10, 10, 50, 50]}, {"bbox_2d": [1, 1]}]', "qwen2_5_vl", [[10 * SX, 10 * SY, 50 * SX, 50 * SY]], [""], [0], "object 2"),
    ('{"answer": 42}', "qwen2_5_vl", [], [], [], "not four finite numbers"),
    ('[{"bbox_2d": [10, 10, 50, 50]} {"bbox_2d": [60, 60, 90, 90]}', "qwen2_5_vl",  # broken list: objects one by one
     [[10 * SX, 10 * SY, 50 * SX, 50 * SY], [60 * SX, 60 * SY, 90 * SX, 90 * SY]], ["", ""], [0, 0], ""),
    ("[[[[[[", "qwen2_5_vl", [], [], [], "not JSON"),
    ('"just a string"', "qwen2_5_vl", [], [], [], "no JSON"),
    ("<ref>plane</ref> somewhere", "qwen_vl", [], [], [], "no <box>"),
    ('[{"bbox_2d": [10, 10, 50, 50], "point_2d": [1e30, 5]}]', "qwen2_5_vl", [[10 * SX, 10 * SY, 50 * SX, 50 * SY]], [""], [0], ""),
]


@pytest.mark.parametrize("answer, convention, boxes, labels, n_points, reason", CASES)
def test_table_of_answers(answer, convention, boxes, labels, n_points, reason):
    g = parse_grounding(answer, IMAGE, RESIZED, convention)
    assert g.boxes.shape == (len(boxes), 4) and g.boxes.dtype == np.float32
    np.testing.assert_allclose(g.boxes, np.array(boxes, np.float32).reshape(-1, 4), atol=1e-3)
    assert g.labels == labels
    assert [len(p) for p in g.points] == n_points
    assert reason in g.reason
    if not boxes:
        assert g.reason  # an empty result always says why


def test_points_are_scaled_and_clamped():
    g = parse_grounding('[{"bbox_2d": [10, 10, 50, 50], "point_2d": [30, 700]}]', IMAGE, RESIZED, "qwen2_5_vl")
    np.testing.assert_allclose(g.points[0], [[30 * SX, 480]], atol=1e-3)


def test_five_hundred_objects_are_capped_and_said_so():
    import json

    answer = json.dumps([{"bbox_2d": [i % 600, 10, i % 600 + 20, 40]} for i in range(500)])
    g = parse_grounding(answer, IMAGE, RESIZED, "qwen2_5_vl")
    assert len(g) == 100 and "kept the first 100" in g.reason


def test_an_unknown_convention_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown grounding convention"):
        parse_grounding("[]", IMAGE, RESIZED, "llava")
