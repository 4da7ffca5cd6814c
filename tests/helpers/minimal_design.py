"""A whole design in one small file, defined outside vlmsam: it proves a new design needs no edit of ours.

``brightest`` answers every request with one mask: the pixels brighter than the image's mean (a
different request about the same image gives the same mask; a request naming "dark" inverts it).
It registers through the ``vlmsam.designs`` entry point of a test distribution (tests/test_open_registry.py)
or through ``vlmsam.engine.register``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vlmsam.engine import BuildSpec, Design, SegmenterBase
from vlmsam.engine.registry import CONFIG_NAME
from vlmsam.result import SegmentationResult


class BrightestSegmenter(SegmenterBase):
    name = "brightest"

    @property
    def device(self):
        return torch.device("cpu")

    def to(self, device):
        return self  # no weights: nothing moves

    def _encode(self, image, key):
        gray = np.asarray(image.convert("L"), np.float32)
        return self.handle(image, key, extras={"bright": gray > gray.mean()})

    def _segment(self, encoded, request, options):
        mask = encoded.extras["bright"]
        if "dark" in request.lower():
            mask = ~mask
        return SegmentationResult(masks=mask[None], text=f"the {'dark' if 'dark' in request.lower() else 'bright'} part")

    def save_pretrained(self, path) -> Path:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_NAME).write_text(json.dumps({"model_type": "vlmsam_brightest"}))
        return out


def build(spec: BuildSpec) -> BrightestSegmenter:
    return BrightestSegmenter(label=str(spec.path or "brightest"))


DESIGN = Design(name="brightest", build=build, accepts=frozenset({"path"}), summary="the pixels brighter than the mean")
