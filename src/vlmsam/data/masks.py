"""Annotation geometry to pixel masks: LabelMe polygons, COCO polygons / RLE, label PNGs."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils


def fill_polygon(points, height: int, width: int) -> np.ndarray:
    """``(H, W) uint8`` with 1 inside the polygon and on its outline (as ``cv2.fillPoly`` after
    ``cv2.polylines`` fills it, which is how ReasonSeg's masks were made); vertices are cast to int
    the same way (truncation)."""
    canvas = Image.new("L", (width, height), 0)
    pts = [(int(x), int(y)) for x, y in points]
    if len(pts) >= 2:
        ImageDraw.Draw(canvas).polygon(pts, fill=1, outline=1)
    return np.asarray(canvas, dtype=np.uint8)


def coco_segmentation_to_mask(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygon list, compressed RLE or uncompressed RLE) -> ``(H, W) uint8``.

    Several polygons of one object are merged with a logical OR (summing them, as some published
    loaders do, gives 2 where they overlap).
    """
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            raise ValueError("polygon segmentation with fewer than 3 points")
        rles = mask_utils.frPyObjects(polygons, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        rle = dict(segmentation)
        if isinstance(rle["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        elif isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode()
        if tuple(rle["size"]) != (height, width):
            raise ValueError(f"RLE of size {tuple(rle['size'])} on an image of size {(height, width)}")
    else:
        raise ValueError(f"unknown segmentation format {type(segmentation).__name__}")
    return mask_utils.decode(rle).astype(np.uint8)


def read_label_png(path) -> np.ndarray:
    """A label map as ``(H, W) uint8`` (palette PNGs give their indices, not colours)."""
    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"label map has mode {im.mode}, expected a single-channel PNG")
        arr = np.asarray(im)
    if arr.max(initial=0) > 255:
        raise ValueError("label values above 255 in a label map")
    return arr.astype(np.uint8)
