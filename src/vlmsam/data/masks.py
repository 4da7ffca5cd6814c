"""Annotation geometry to pixel masks: LabelMe polygons, COCO polygons / RLE, label PNGs.

Targets are built exactly as LISA's published evaluation builds them, so that a model scored by
``vlmsam evaluate`` / ``vlmsam score`` gets the numbers the published code would give it:

- polygons are rasterised by OpenCV (``cv2.polylines`` with thickness 1, then ``cv2.fillPoly``)
  on vertices cast to ``int32`` (truncation). OpenCV's outline drawing changed after 4.10, so the
  release is pinned in ``constraints.txt`` (4.10.0.84 draws what LISA's pinned 4.8.0.74 draws).
- COCO segmentations go through pycocotools; the parts of a multi-part object are *summed* by the
  published code (2 where they overlap, which its metric counts as background) and OR-ed by us
  for training: ``combine`` chooses.
"""

from __future__ import annotations

import math
import reprlib

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

# A vertex further out than this is not a coordinate but a broken number (int32 would overflow).
MAX_COORDINATE = 1e6
COMBINE = ("sum", "or")


def polygon_points(points) -> np.ndarray:
    """LabelMe ``points`` (``[[x, y], ...]``) -> ``(1, K, 2) int32`` as the published code casts them.

    Raises ValueError for anything that is not a non-empty list of finite ``[x, y]`` pairs.
    """
    if not isinstance(points, (list, tuple)) or not points:
        raise ValueError("points must be a non-empty list of [x, y] pairs")
    pairs = []
    for p in points:
        if not isinstance(p, (list, tuple)) or len(p) != 2:
            raise ValueError(f"point {reprlib.repr(p)} is not an [x, y] pair")
        try:
            x, y = (float(v) for v in p)
        except OverflowError:  # an integer too large for a float
            raise ValueError(f"point {reprlib.repr(p)} is not a finite image coordinate") from None
        if not (math.isfinite(x) and math.isfinite(y)) or max(abs(x), abs(y)) > MAX_COORDINATE:
            raise ValueError(f"point {reprlib.repr(p)} is not a finite image coordinate")
        pairs.append((x, y))
    return np.array([pairs], dtype=np.float64).astype(np.int32)  # float -> int32 truncates, as np.array(..., int32)


def draw_polygon(canvas: np.ndarray, points: np.ndarray, value: int) -> np.ndarray:
    """Draw one polygon into ``canvas`` (in place) as LISA does: outline, then fill."""
    cv2.polylines(canvas, points, True, int(value), 1)
    cv2.fillPoly(canvas, points, int(value))
    return canvas


def fill_polygon(points, height: int, width: int) -> np.ndarray:
    """``(H, W) uint8`` with 1 inside the polygon and on its outline; vertices as in :func:`polygon_points`.

    A one-point shape is a dot and a two-point shape a line, as OpenCV draws them; parts past the
    image edge are clipped.
    """
    return draw_polygon(np.zeros((height, width), np.uint8), polygon_points(points), 1)


def coco_segmentation_to_mask(segmentation, height: int, width: int, combine: str = "or") -> np.ndarray:
    """A COCO ``segmentation`` -> ``(H, W) uint8``.

    Accepted forms: a list of polygons (flat ``[x1, y1, x2, y2, ...]`` lists), one RLE dict
    (compressed string or uncompressed counts), or a list of RLE dicts. An empty list is an
    all-zero target (as published). ``combine`` says how the parts of one object merge: ``"or"``
    (a 0/1 mask) or ``"sum"`` (the published construction: 2 where two parts overlap).
    """
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, not {combine!r}")
    if isinstance(segmentation, dict):
        parts = [segmentation]
    elif isinstance(segmentation, list):
        parts = segmentation
    else:
        raise ValueError(f"unknown segmentation format {type(segmentation).__name__}")
    if not parts:
        return np.zeros((height, width), np.uint8)
    if all(isinstance(p, dict) for p in parts):
        rles = [_rle(p, height, width) for p in parts]
    elif all(isinstance(p, list) for p in parts):
        for p in parts:
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in p):
                raise ValueError("polygon coordinates must be finite numbers")
        # The same call as the published loader (pycocotools reads a first part of 4 numbers as a box).
        try:
            rles = mask_utils.frPyObjects(parts, height, width)
        except Exception as exc:  # pycocotools raises bare Exceptions for odd shapes
            raise ValueError(f"polygon segmentation pycocotools cannot read ({exc})") from None
    else:
        raise ValueError("a segmentation list must hold only polygons or only RLE dicts")
    decoded = mask_utils.decode(rles)  # (H, W, n)
    if combine == "or":
        return decoded.any(axis=2).astype(np.uint8)
    return decoded.sum(axis=2).astype(np.uint8)


def _rle(part: dict, height: int, width: int) -> dict:
    """One RLE dict in pycocotools' compressed form, its size checked before anything is decoded."""
    try:
        size = [int(v) for v in part["size"]]
        counts = part["counts"]
    except (KeyError, TypeError, ValueError):
        raise ValueError("an RLE needs 'size': [h, w] and 'counts'") from None
    if size != [height, width]:
        raise ValueError(f"RLE of size {tuple(size)} on an image of size {(height, width)}")
    if isinstance(counts, list):  # uncompressed
        if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
            raise ValueError(f"uncompressed RLE counts must be non-negative integers summing to {height * width}")
        return mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
    if isinstance(counts, str):
        counts = counts.encode()
    if not isinstance(counts, bytes):
        raise ValueError("RLE counts must be a string or a list of integers")
    return {"size": size, "counts": counts}


def read_label_png(path) -> np.ndarray:
    """A label map as ``(H, W) uint8`` (palette PNGs give their indices, not colours)."""
    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"label map has mode {im.mode}, expected a single-channel PNG")
        arr = np.asarray(im)
    if arr.max(initial=0) > 255:
        raise ValueError("label values above 255 in a label map")
    return arr.astype(np.uint8)
