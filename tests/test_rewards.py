"""The grounding rewards (vlmsam.grounding.rewards): tabled answers with values worked out by hand, and a peer
test against Seg-Zero's published reward functions (tests/reference/, copied from dvlab-research/Seg-Zero)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.reference import segzero_reward_seg_strict as published_seg
from tests.reference import segzero_reward_vision_reasoner as published_vr
from vlmsam.grounding.rewards import Truth, mask_iou, mask_iou_reward, non_repeat, seg_zero_reward, vision_reasoner_reward

TWO = Truth.of([[100, 100, 300, 300], [500, 500, 700, 600]], [[[200, 200]], [[600, 550]]])
NONE = Truth.of(np.zeros((0, 4)), np.zeros((0, 1, 2)))


def vr(objects, think="<think>two shapes</think>"):
    return f"{think}<answer>{json.dumps(objects)}</answer>"


VR_TABLE = [
    # (answer, truth, think, format, accuracy, non_repeat)
    (vr([{"bbox_2d": [100, 100, 300, 300], "point_2d": [200, 200]}, {"bbox_2d": [500, 500, 700, 600], "point_2d": [600, 550]}]),
     TWO, 1, 2, 3, 1),  # both objects exact: 3 terms each, 6 / max(2, 2)
    (vr([{"bbox_2d": [100, 100, 300, 300], "point_2d": [200, 200]}]), TWO, 1, 2, 1.5, 1),  # one of two: 3 / 2
    # box 12 px off on each side: IoU (201*201 vs 225*225 inclusive) 0.80 > 0.5, L1 12 not < 10, point 0 px: 2 / 2
    (vr([{"bbox_2d": [88, 88, 312, 312], "point_2d": [200, 200]}, {"bbox_2d": [500, 500, 700, 600], "point_2d": [600, 550]}]),
     TWO, 1, 2, 2.5, 1),
    # the point 40 px away (not < 30) and the second object missing its point: format (1 + 2) / 2, accuracy 0 (KeyError)
    (vr([{"bbox_2d": [100, 100, 300, 300], "point_2d": [240, 200]}, {"bbox_2d": [500, 500, 700, 600]}]), TWO, 1, 1.5, 0, 1),
    (vr([]), NONE, 1, 2, 3, 1),  # no target, none named: our no-target rule
    (vr([{"bbox_2d": [1, 1, 50, 50], "point_2d": [5, 5]}]), NONE, 1, 2, 0, 1),  # no target, one named
    (" " + vr([]), TWO, 0, 0, 0, 1),  # text before <think>: no think format; an empty list scores nothing
    ("<think>x. a. a. a. </think><answer>[]</answer>", TWO, 1, 0, 0, 0),  # a sentence back twice
]


@pytest.mark.parametrize("answer, truth, think, fmt, acc, rep", VR_TABLE)
def test_vision_reasoner_terms_on_tabled_answers(answer, truth, think, fmt, acc, rep):
    terms = vision_reasoner_reward(answer, truth)
    assert terms == pytest.approx({"think_format": think, "answer_format": fmt, "accuracy": acc, "non_repeat": rep,
                                   "total": think + fmt + acc + rep})


ONE = Truth.of([[100, 100, 300, 300]], [[[150, 150], [250, 250]]])


def sz(obj, think="<think>t</think>"):
    return f"{think}<answer>{json.dumps(obj)}</answer>"


SZ_TABLE = [
    # (answer, truth, [think, format, iou, l1, points])
    (sz({"bbox": [100, 100, 300, 300], "points_1": [150, 150], "points_2": [250, 250]}), ONE, [1, 1, 1, 1, 1]),
    # points swapped: the better pairing counts; box 20 px wider on the right: IoU 201/221 > 0.5, L1 5 < 10
    (sz({"bbox": [100, 100, 320, 300], "points_1": [250, 250], "points_2": [150, 150]}), ONE, [1, 1, 1, 1, 1]),
    # a point outside the predicted box: no point term; box far: no IoU (inclusive IoU 0), no L1
    (sz({"bbox": [400, 400, 500, 500], "points_1": [450, 450], "points_2": [600, 600]}), ONE, [1, 1, 0, 0, 0]),
    # points 120 px from the truth on average: no point term
    (sz({"bbox": [0, 0, 400, 400], "points_1": [270, 150], "points_2": [370, 250]}), ONE, [1, 1, 0, 0, 0]),
    ("<think>t</think><answer>{'bbox': [100,100,300,300], 'points_1': [150,150], 'points_2': [250,250]}</answer>", ONE,
     [1, 0, 0, 0, 0]),  # single quotes (the prompt's own example) are not JSON
    (sz({"bbox": [100, 100, 300, 300], "points_1": [150, 150]}), ONE, [1, 0, 1, 1, 0]),  # one point only
    ("<think>nothing</think><answer>none</answer>", NONE, [1, 1, 1, 1, 1]),  # no target, none named
    (sz({"bbox": [100, 100, 300, 300], "points_1": [150, 150], "points_2": [250, 250]}), NONE, [1, 0, 0, 0, 0]),
]


@pytest.mark.parametrize("answer, truth, expected", SZ_TABLE)
def test_seg_zero_terms_on_tabled_answers(answer, truth, expected):
    terms = seg_zero_reward(answer, truth)
    names = ["think_format", "answer_format", "box_iou", "box_l1", "points"]
    assert [terms[n] for n in names] == expected and terms["total"] == sum(expected)


def random_vr_answer(rng, truth_objects):
    """An answer a policy might give: the truth jittered, objects dropped or added, keys or numbers broken."""
    objs = []
    for box, point in truth_objects:
        if rng.random() < 0.2:
            continue
        jitter = rng.normal(0, rng.choice([2, 15, 60]), 6)
        b = [int(v) for v in np.array(box) + jitter[:4]]
        p = [int(v) for v in np.array(point) + jitter[4:]]
        objs.append({"bbox_2d": b, "point_2d": p})
    if rng.random() < 0.2:
        objs.append({"bbox_2d": [int(v) for v in sorted(rng.integers(0, 840, 4))], "point_2d": [int(v) for v in rng.integers(0, 840, 2)]})
    if objs and rng.random() < 0.15:
        k = rng.integers(len(objs))
        objs[k] = rng.choice([{"bbox_2d": objs[k]["bbox_2d"]}, {"bbox_2d": [1, 2, 3], "point_2d": [1, 2]},
                              {"bbox_2d": ["1", 2, 3, 4], "point_2d": [1, 2]}, {"bbox_2d": [1, 2, 3, 4], "point_2d": [1, 2, 3]},
                              {"bbox_2d": [True, 2, 3, 4], "point_2d": [1, 2]}])
    think = rng.choice(["<think>look.</think>", " <think>x</think>", "<think>a. a. a.</think>", ""])
    body = json.dumps(objs) if rng.random() > 0.05 else "not json"
    return f"{think}<answer>{body}</answer>" if rng.random() > 0.05 else think


def test_vision_reasoner_equals_the_published_reward():
    rng = np.random.default_rng(0)
    compared = 0
    for _ in range(1500):
        n = int(rng.integers(1, 4))
        x = rng.integers(0, 600, (n, 2))
        wh = rng.integers(20, 240, (n, 2))
        boxes = np.concatenate([x, x + wh], axis=1)
        points = (x + wh // 2)[:, None, :]
        truth = Truth.of(boxes, points)
        answer = random_vr_answer(rng, [(b.tolist(), p[0].tolist()) for b, p in zip(boxes, points)])
        gt = json.dumps([{"bbox_2d": b.tolist(), "point_2d": p[0].tolist()} for b, p in zip(boxes, points)])
        ours = vision_reasoner_reward(answer, truth)
        assert ours["total"] == pytest.approx(published_vr.vision_reasoner_compute_score(answer, gt)), answer
        assert ours["accuracy"] == pytest.approx(published_vr.vision_reasoner_accuracy_reward(answer, gt)), answer
        compared += ours["accuracy"] > 0
    assert compared > 500  # most answers earn some accuracy: the matching itself was compared


def test_seg_zero_equals_the_published_reward():
    rng = np.random.default_rng(1)
    for _ in range(1500):
        x, y = (int(v) for v in rng.integers(0, 600, 2))
        w, h = (int(v) for v in rng.integers(20, 240, 2))
        box = [x, y, x + w, y + h]
        pts = [[x + w // 3, y + h // 3], [x + 2 * w // 3, y + 2 * h // 3]]
        j = rng.normal(0, rng.choice([3, 20, 80]), 8).astype(int)
        obj = {"bbox": [box[k] + int(j[k]) for k in range(4)], "points_1": [pts[0][0] + int(j[4]), pts[0][1] + int(j[5])],
               "points_2": [pts[1][0] + int(j[6]), pts[1][1] + int(j[7])]}
        if rng.random() < 0.2:
            obj.pop(rng.choice(list(obj)))
        if rng.random() < 0.1:
            obj["bbox"] = [1, 2, 3]
        answer = rng.choice(["<think>t</think>", "<think>t</think> ", ""]) + f"<answer>{json.dumps(obj)}</answer>"
        gt = f"<box>({box[0]},{box[1]}),({box[2]},{box[3]})</box><points>({pts[0][0]},{pts[0][1]}),({pts[1][0]},{pts[1][1]})</points>"
        ours = seg_zero_reward(answer, Truth.of([box], [pts]))
        assert ours["total"] == published_seg.seg_strict_compute_score(answer, gt), answer


def test_non_repeat_and_mask_iou_tiers():
    assert non_repeat("a. b. a.") == 1.0 and non_repeat("a. a. b. b.") == 0.0
    a = np.zeros((10, 10), bool)
    a[:5] = True
    b = a.copy()
    b[:4] = False  # IoU 10 / 50 = 0.2
    assert mask_iou(a, a) == 1.0 and mask_iou(a, b) == pytest.approx(0.2)
    assert mask_iou(np.zeros_like(a), np.zeros_like(a)) == 1.0  # no target, nothing drawn
    text = "<think>t</think><answer>[]</answer>"
    assert [mask_iou_reward(text, v)["mask_iou"] for v in (0.9, 0.75, 0.6, 0.5, 0.1)] == [4, 3, 2, 0, 0]
    assert mask_iou_reward(text, 0.9)["total"] == 5.0
