"""Rewards for reinforcement learning of grounding answers, as Seg-Zero, VisionReasoner and SAM-R1 publish them.

Each reward takes the completion's text and the truth (:class:`Truth`: boxes and points in the frame the
model answers in, e.g. the 840 x 840 image of the published models) and returns its terms by name, so
that every term is logged on its own; ``total`` is their sum. Distances ("px" below) are in that frame's
units: pixels, or grid steps for a model that answers on a 0-1000 grid (Qwen3-VL).

* :func:`seg_zero_reward` (Seg-Zero's ``seg_strict``, max 5): ``<think>...</think><answer>...</answer>``
  as the whole text; the first ``{...}`` with ``bbox`` (4) and ``points_1`` / ``points_2`` (2 each); box
  IoU > 0.5 (inclusive pixel convention, +1); mean box L1 < 10 px; both points inside the predicted box
  and their mean distance to the truth's two points (either pairing) < 100 px. One object.
* :func:`vision_reasoner_reward` (max 7): the think format (1); per object of the ``<answer>`` list 1 for a
  4-number ``bbox_2d`` and 1 for a 2-number ``point_2d``, averaged (2); objects matched to the truth by
  the Hungarian algorithm on three 0/1 terms per pair (box IoU > 0.5, mean box L1 < 10, point within
  30 px of the truth's and inside its own box), summed and divided by max(#predicted, #true) (3); no
  sentence repeated twice (1).
* :func:`mask_iou_reward` (SAM-R1): the IoU of SAM's mask from the predicted prompts with the truth, tiered
  4 / 3 / 2 / 0 above 0.8 / 0.7 / 0.5 (the tiers as the paper describes them; no code is published).

A request with **no target** (``Truth`` with no boxes) is our addition: the published rewards score every
answer 0 on accuracy there. Here an answer whose list is empty (``[]``; for Seg-Zero, an ``<answer>`` with
no ``{``) earns the accuracy terms in full, and an answer that names an object earns none. Anything
unparsable scores 0 on the terms it fails, never raises.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np

THINK_ANSWER = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
FIRST_OBJECT = re.compile(r"{[^}]+}")
MAX_OBJECTS = 120  # VisionReasoner's cap on either side


@dataclass(frozen=True)
class Truth:
    """The true objects in the answer's frame: ``boxes (N, 4)`` XYXY and ``points (N, P, 2)``."""

    boxes: np.ndarray
    points: np.ndarray

    @classmethod
    def of(cls, boxes, points) -> Truth:
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        points = np.asarray(points, np.float64)
        points = points.reshape(len(boxes), -1, 2) if len(boxes) else np.zeros((0, 1, 2))
        return cls(boxes, points)

    @property
    def empty(self) -> bool:
        return len(self.boxes) == 0


def think_format(text: str) -> float:
    return 1.0 if THINK_ANSWER.fullmatch(text) else 0.0


# ---- Seg-Zero ---------------------------------------------------------------------------------------------------


def _box_iou_inclusive(a, b) -> float:
    """Seg-Zero's box IoU: pixel-inclusive areas (+1), no overlap unless both sides overlap strictly."""
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = (x2 - x1 + 1) * (y2 - y1 + 1) if x1 < x2 and y1 < y2 else 0
    union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return float(inter) / union


def _seg_zero_object(text: str):
    match = FIRST_OBJECT.search(text)
    return json.loads(match.group(0)) if match else None


def seg_zero_reward(text: str, truth: Truth) -> dict[str, float]:
    """Seg-Zero's five 0/1 terms (module docstring); the truth's first object and its first two points."""
    terms = {"think_format": think_format(text), "answer_format": 0.0, "box_iou": 0.0, "box_l1": 0.0, "points": 0.0}
    try:
        data = _seg_zero_object(text)
    except (ValueError, RecursionError):
        data = None
    if truth.empty:
        answer = ANSWER.search(text)
        if answer and "{" not in answer.group(1):  # names nothing: every accuracy term
            terms.update(answer_format=1.0, box_iou=1.0, box_l1=1.0, points=1.0)
        return _total(terms)
    if not isinstance(data, dict):
        return _total(terms)
    terms["answer_format"] = float(_seg_zero_valid(data))
    true_box, true_points = truth.boxes[0].tolist(), truth.points[0, :2].tolist()
    box = data.get("bbox")
    try:
        if len(box) == 4:
            terms["box_iou"] = float(_box_iou_inclusive(box, true_box) > 0.5)
            terms["box_l1"] = float(sum(abs(p - t) for p, t in zip(box, true_box)) / 4 < 10)
    except (TypeError, ZeroDivisionError):
        pass
    terms["points"] = _seg_zero_points(data, box, true_points)
    return _total(terms)


def _seg_zero_valid(data: dict) -> bool:
    if any(k not in data for k in ("bbox", "points_1", "points_2")):
        return False
    return (isinstance(data["bbox"], list) and len(data["bbox"]) == 4
            and all(isinstance(data[k], list) and len(data[k]) == 2 for k in ("points_1", "points_2")))


def _seg_zero_points(data: dict, box, true_points) -> float:
    """Both points (truncated to int) inside the predicted box, mean distance to the truth's < 100 px."""
    try:
        if len(box) != 4:  # as published: the points are judged against a box of four numbers only
            return 0.0
        p1, p2 = ([int(data[k][0]), int(data[k][1])] for k in ("points_1", "points_2"))
        inside = all(box[0] <= p[0] <= box[2] and box[1] <= p[1] <= box[3] for p in (p1, p2))
        if not inside:
            return 0.0
        (a, b), (c, d) = (p1, p2), true_points
        straight = math.dist(a, c) + math.dist(b, d)
        crossed = math.dist(a, d) + math.dist(b, c)
        return float(min(straight, crossed) / 2 < 100)
    except (TypeError, KeyError, IndexError, ValueError, OverflowError):
        return 0.0


# ---- VisionReasoner ---------------------------------------------------------------------------------------------


def vision_reasoner_reward(text: str, truth: Truth) -> dict[str, float]:
    """VisionReasoner's terms (module docstring): think_format, answer_format, accuracy, non_repeat."""
    items = _answer_list(text)
    terms = {"think_format": think_format(text), "answer_format": _vr_format(items, truth.empty),
             "accuracy": _vr_accuracy(items, truth), "non_repeat": non_repeat(text)}
    return _total(terms)


def _answer_list(text: str):
    match = ANSWER.search(text)
    if not match:
        return None
    try:
        return json.loads(match.group(1))
    except (ValueError, RecursionError):
        return None


def _vr_format(items, no_target: bool) -> float:
    if items == [] and no_target:
        return 2.0
    if not isinstance(items, (list, dict, str)) or not items:
        return 0.0
    total = 0.0
    try:
        for item in items:  # as published: a dict or a string is iterated too (and mostly scores nothing)
            cur = 0.0
            if "bbox_2d" in item and isinstance(item["bbox_2d"], list) and len(item["bbox_2d"]) == 4:
                cur += 1.0
            if "point_2d" in item and isinstance(item["point_2d"], list) and len(item["point_2d"]) == 2:
                cur += 1.0
            total += cur / len(items)
    except (TypeError, KeyError, IndexError):
        pass  # the terms counted before the failing item stay, as published
    return total


def _vr_accuracy(items, truth: Truth) -> float:
    if truth.empty:
        return 3.0 if items == [] else 0.0
    try:
        boxes = np.array([item["bbox_2d"] for item in items][:MAX_OBJECTS])
        points = np.array([item["point_2d"] for item in items][:MAX_OBJECTS])
        true_boxes, true_points = truth.boxes[:MAX_OBJECTS], truth.points[:MAX_OBJECTS, 0]
        hits = _pair_hits(boxes, points, true_boxes, true_points)
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(3.0 - hits)
        return float(hits[rows, cols].sum() / max(len(boxes), len(true_boxes)))
    except (TypeError, KeyError, IndexError, ValueError, ZeroDivisionError, OverflowError):
        return 0.0


def _pair_hits(boxes, points, true_boxes, true_points) -> np.ndarray:
    """``(M, N)`` sum of the three 0/1 terms of each predicted / true pair (raises on malformed arrays)."""
    if boxes.ndim != 2 or boxes.shape[1] != 4 or points.ndim != 2 or points.shape[1] != 2:
        raise ValueError("objects of the wrong shape")
    if boxes.dtype.kind not in "iuf" or points.dtype.kind not in "iuf":  # strings, booleans, None: no arithmetic, as published
        raise TypeError("coordinates that are not numbers")
    b, t = boxes[:, None, :].astype(np.float64), true_boxes[None, :, :]
    iw = np.maximum(0, np.minimum(b[..., 2], t[..., 2]) - np.maximum(b[..., 0], t[..., 0]) + 1)
    ih = np.maximum(0, np.minimum(b[..., 3], t[..., 3]) - np.maximum(b[..., 1], t[..., 1]) + 1)
    inter = iw * ih
    area = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    true_area = (t[..., 2] - t[..., 0] + 1) * (t[..., 3] - t[..., 1] + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area + true_area - inter)
    l1 = np.abs(b - t).mean(axis=2)
    p = points.astype(np.float64)
    dist = np.sqrt(((p[:, None, :] - true_points[None, :, :]) ** 2).sum(axis=2))
    inside = (p[:, 0] >= b[:, 0, 0]) & (p[:, 0] <= b[:, 0, 2]) & (p[:, 1] >= b[:, 0, 1]) & (p[:, 1] <= b[:, 0, 3])
    return (iou > 0.5).astype(float) + (l1 < 10).astype(float) + ((dist < 30) & inside[:, None]).astype(float)


def non_repeat(text: str) -> float:
    """0 once a sentence (split at '.') has come back twice, else 1."""
    seen, repeats = set(), 0
    for sentence in (s.strip() for s in text.split(".")):
        if not sentence:
            continue
        repeats += sentence in seen
        if repeats >= 2:
            return 0.0
        seen.add(sentence)
    return 1.0


# ---- SAM-R1 -----------------------------------------------------------------------------------------------------


def mask_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """IoU of two boolean masks; two empty masks agree fully (a correct 'no target' answer)."""
    union = np.logical_or(pred, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, truth).sum() / union)


def mask_iou_reward(text: str, iou: float, *, tiers: bool = True) -> dict[str, float]:
    """SAM-R1: the think format plus the tiered IoU of SAM's mask from the answer's prompts (``tiers=False``:
    4 x the IoU itself, a finer signal for the group's comparison)."""
    if not tiers:
        return _total({"think_format": think_format(text), "mask_iou": 4.0 * float(iou)})
    tier = 4.0 if iou > 0.8 else 3.0 if iou > 0.7 else 2.0 if iou > 0.5 else 0.0
    return _total({"think_format": think_format(text), "mask_iou": tier})


def _total(terms: dict[str, float]) -> dict[str, float]:
    terms = {k: float(v) for k, v in terms.items()}
    terms["total"] = sum(terms.values())
    return terms


REWARDS = {"seg_zero": seg_zero_reward, "vision_reasoner": vision_reasoner_reward}
