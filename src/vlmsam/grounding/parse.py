"""One parser for every grounding convention a VLM answers in.

* ``qwen2_5_vl``: JSON ``{"bbox_2d": [x1, y1, x2, y2], "point_2d": [x, y], "label": ...}`` (a list or
  one object) in absolute pixels of the image *as the processor resized it* (``model_input_size``).
* ``qwen3_vl``: the same JSON on a 0-1000 grid.
* ``qwen_vl``: ``<ref>plane</ref><box>(343,119),(714,261)</box>`` on a 0-1000 grid, several boxes.

JSON may come in ```json fences or in Seg-Zero's ``<think>...</think><answer>...</answer>``. Corners
given the wrong way round are swapped, boxes reaching past the image are clamped to it, and an
object whose box is degenerate, non-numeric, of the wrong length or absurdly large is dropped. Text
with nothing usable gives an empty result whose ``reason`` says why; the parser never raises.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import numpy as np

CONVENTIONS = ("qwen2_5_vl", "qwen3_vl", "qwen_vl")
GRID = 1000.0  # the 0-1000 grid of Qwen-VL and Qwen3-VL
MAX_OBJECTS = 100
# A coordinate further than this many frame sizes outside the frame is a broken number, not a box.
ABSURD = 4.0


@dataclass
class Grounding:
    """Objects found in an answer, in original-image pixels.

    Attributes:
        boxes: ``(N, 4) float32`` XYXY.
        points: per object an ``(P, 2) float32`` array of x/y points (``P`` may be 0).
        labels: per object its label ("" where the answer gave none).
        reason: why objects were dropped or none was found ("" when everything was usable).
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    points: list[np.ndarray] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    reason: str = ""

    def __len__(self) -> int:
        return len(self.boxes)


def parse_grounding(text: str, image_size: tuple[int, int], model_input_size: tuple[int, int] | None = None,
                    convention: str = "qwen2_5_vl", *, max_objects: int = MAX_OBJECTS) -> Grounding:
    """Parse ``text`` (sizes are ``(width, height)``; ``model_input_size`` is needed for ``qwen2_5_vl``)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown grounding convention {convention!r}; choose from {', '.join(CONVENTIONS)}")
    if not isinstance(text, str) or not text.strip():
        return Grounding(reason="empty answer")
    width, height = image_size
    if convention == "qwen2_5_vl":
        frame = model_input_size or image_size
    else:
        frame = (GRID, GRID)
    scale = (width / frame[0], height / frame[1])
    if convention == "qwen_vl":
        raw, problems = _qwen_vl_objects(text)
    else:
        raw, problems = _json_objects(_answer_part(text))
    boxes, points, labels = [], [], []
    for k, obj in enumerate(raw):
        box, pts, label, problem = _object(obj, frame, scale, (width, height))
        if problem:
            problems.append(f"object {k + 1}: {problem}")
            continue
        boxes.append(box)
        points.append(pts)
        labels.append(label)
    if len(boxes) > max_objects:
        problems.append(f"{len(boxes)} objects; kept the first {max_objects}")
        boxes, points, labels = boxes[:max_objects], points[:max_objects], labels[:max_objects]
    if not boxes and not problems:
        problems.append("no object in the answer")
    return Grounding(np.array(boxes, np.float32).reshape(-1, 4), points, labels, "; ".join(problems[:5]))


def _answer_part(text: str) -> str:
    """The part that holds the objects: inside <answer>, else after </think>, inside a ```json fence if any."""
    answer = re.search(r"<answer>(.*?)(?:</answer>|$)", text, re.S)
    if answer:
        text = answer.group(1)
    elif "</think>" in text:
        text = text.split("</think>", 1)[1]
    fence = re.search(r"```(?:json)?\s*(.*?)(?:```|$)", text, re.S)
    return fence.group(1) if fence else text


def _json_objects(text: str) -> tuple[list, list[str]]:
    """Objects of a JSON list / object; where the whole does not parse, each ``{...}`` on its own."""
    start = min([i for i in (text.find("["), text.find("{")) if i >= 0], default=-1)
    if start < 0:
        return [], ["no JSON in the answer"]
    candidate = text[start:]
    for end in (len(candidate), candidate.rfind("]") + 1, candidate.rfind("}") + 1):
        try:
            data = json.loads(candidate[:end])
        except (ValueError, RecursionError):
            continue
        if isinstance(data, dict):
            data = data.get("objects", [data]) if isinstance(data.get("objects"), list) else [data]
        if isinstance(data, list):
            return data, []
        return [], [f"JSON {type(data).__name__} instead of objects"]
    objects = []
    for piece in re.findall(r"\{[^{}]*\}", candidate):
        try:
            objects.append(json.loads(piece))
        except ValueError:
            continue
    return objects, ([] if objects else ["not JSON"])


_BOX = re.compile(r"<box>\s*\(\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\)\s*,\s*\(\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\)\s*</box>")


def _qwen_vl_objects(text: str) -> tuple[list, list[str]]:
    objects, label = [], ""
    for token in re.finditer(r"<ref>(.*?)</ref>|" + _BOX.pattern, text, re.S):
        if token.group(1) is not None:
            label = token.group(1).strip()
        else:
            objects.append({"bbox_2d": [token.group(k) for k in range(2, 6)], "label": label})
    return objects, ([] if objects else ["no <box>(x1,y1),(x2,y2)</box> in the answer"])


def _numbers(values, n: int) -> list[float] | None:
    if not isinstance(values, (list, tuple)) or len(values) != n:
        return None
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) for v in out) else None


def _object(obj, frame, scale, image_size):
    """``(box, points, label, problem)`` of one parsed object (problem "" when usable)."""
    if not isinstance(obj, dict):
        return None, None, "", "not an object"
    raw_box = obj.get("bbox_2d", obj.get("bbox", obj.get("box_2d")))
    box = _numbers(raw_box, 4)
    if box is None:
        return None, None, "", "bbox_2d is not four finite numbers"
    fw, fh = frame
    if any(abs(v) > ABSURD * max(fw, fh) for v in box):
        return None, None, "", "coordinates far outside the image"
    x1, y1, x2, y2 = box
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    sx, sy = scale
    w, h = image_size
    x1, x2 = min(max(x1 * sx, 0.0), w), min(max(x2 * sx, 0.0), w)
    y1, y2 = min(max(y1 * sy, 0.0), h), min(max(y2 * sy, 0.0), h)
    if x2 - x1 < 1.0 or y2 - y1 < 1.0:
        return None, None, "", "degenerate box"
    raw_points = obj.get("point_2d", obj.get("points_2d", obj.get("point")))
    points = []
    if raw_points is not None:
        candidates = raw_points if raw_points and isinstance(raw_points[0], (list, tuple)) else [raw_points]
        for p in candidates:
            xy = _numbers(p, 2)
            if xy is None or any(abs(v) > ABSURD * max(fw, fh) for v in xy):
                continue
            points.append((min(max(xy[0] * sx, 0.0), w), min(max(xy[1] * sy, 0.0), h)))
    label = obj.get("label", "")
    return [x1, y1, x2, y2], np.array(points, np.float32).reshape(-1, 2), str(label) if label is not None else "", ""
