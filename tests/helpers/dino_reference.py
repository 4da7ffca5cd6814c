"""Grounding DINO's detections computed without vlmsam's detector adapter.

transformers' ``GroundingDinoForObjectDetection`` is run on its processor's inputs, and its raw
output is read as the model card describes it: a query's score is the sigmoid of its logits, the
largest over the text tokens; its box is (cx, cy, w, h) in fractions of the image, turned here into
XYXY pixels by hand and clipped to the image.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


@torch.inference_mode()
def dino_reference(model, processor, image: np.ndarray, text: str) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes (Q, 4) float32, scores (Q,) float32)`` of every query for ``text`` (given exactly as the
    model reads it, e.g. ``"red square."``), in query order (no threshold, no sorting)."""
    inputs = processor(images=Image.fromarray(image), text=text, return_tensors="pt")
    out = model(**inputs)
    scores = out.logits[0].float().sigmoid().max(dim=-1).values.numpy()
    cx, cy, w, h = out.pred_boxes[0].float().numpy().T
    height, width = image.shape[:2]
    boxes = np.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], axis=1)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return boxes.astype(np.float32), scores.astype(np.float32)


def by_box(boxes: np.ndarray) -> np.ndarray:
    """An order of rows that depends only on the boxes' coordinates (to compare two lists of
    detections whose equal scores may be ranked either way)."""
    return np.lexsort(np.asarray(boxes).T[::-1])
