"""Training answers for grounding designs: ``[SEG]`` answers rewritten as Qwen2.5-VL grounding JSON
(``data.synth_answer_format: grounding``), with boxes and points in the frame of the image as the VLM's
processor resizes it."""

from __future__ import annotations

import json

import numpy as np


def grounding_json(masks: np.ndarray, frame: tuple[int, int]) -> str:
    """Objects as Qwen2.5-VL answers them: ``[{"bbox_2d": [x1, y1, x2, y2], "point_2d": [x, y]}, ...]`` in
    integer pixels of the resized ``frame = (h, w)``; the box is tight around each mask, the point
    the mask pixel nearest to its centre of mass (inside even a concave or occluded shape)."""
    h, w = masks.shape[1:]
    sy, sx = frame[0] / h, frame[1] / w
    objects = []
    for m in masks:
        ys, xs = np.nonzero(m == 1)
        if len(xs) == 0:
            continue
        k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
        box = [round(xs.min() * sx), round(ys.min() * sy), round((xs.max() + 1) * sx), round((ys.max() + 1) * sy)]
        objects.append({"bbox_2d": box, "point_2d": [round((xs[k] + 0.5) * sx), round((ys[k] + 0.5) * sy)]})
    return json.dumps(objects, separators=(",", ":"))


def grounding_answers(conversations, masks: np.ndarray, frame: tuple[int, int], prefix: str = ""):
    """``[SEG]`` answers -> grounding JSON answers (masks consumed in reading order); the sample then
    has no mask targets. Answers without ``[SEG]`` ("There is no ...", captions) stay as they are.
    Returns ``(conversations, no masks, objects)``: ``objects[c]`` are the masks conversation ``c``'s
    answer boxes, in answer order (what its coordinates should look at, for the grounding loss)."""
    out, objects, k = [], [], 0
    for conv in conversations:
        turns, mine = [], []
        for user, answer in conv:
            n = answer.count("[SEG]") if answer else 0
            if n:
                drawn = [m for m in masks[k:k + n] if (m == 1).any()]  # grounding_json skips empty ones too
                answer = prefix + grounding_json(masks[k:k + n], frame)
                mine += drawn
                k += n
            turns.append((user, answer))
        out.append(turns)
        objects.append(np.stack(mine) if mine else masks[:0])
    return out, masks[:0], objects
