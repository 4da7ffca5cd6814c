"""300 deterministic random polygons drawn by LISA's rule, hashed: the pixels of opencv 4.8.0.74.

``python tests/helpers/opencv_golden.py`` prints the hash of whatever OpenCV is installed; the test
compares the pinned release's hash with the one recorded from LISA's pinned ``opencv-python==4.8.0.74``
(run under numpy 1.26 in a separate virtual environment, 2026-11-28).
"""

import hashlib

import cv2
import numpy as np

OPENCV_4_8_0_74_SHA256 = "0adfb1206a8ccc8e1a832244e1f740066d1e16168fa8c584cb6e0784bd333c83"
H, W = 48, 64


def polygons(n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        k = int(rng.integers(1, 13))
        # floats, some past the edges, some negative: the cast to int32 truncates
        yield (rng.random((k, 2)) * [W + 40, H + 40] - 20).tolist()


def draw(points) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    pts = np.array([points], dtype=np.int32)
    cv2.polylines(mask, pts, True, 1, 1)
    cv2.fillPoly(mask, pts, 1)
    return mask


def digest(masks) -> str:
    h = hashlib.sha256()
    for m in masks:
        h.update(np.ascontiguousarray(m, dtype=np.uint8).tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    print(cv2.__version__, digest(draw(p) for p in polygons()))
