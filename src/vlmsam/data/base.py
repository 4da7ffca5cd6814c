"""What every loader provides: an index built once, and samples built on demand from it."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

from vlmsam.data.sample import BadSample, Sample


class SegDataset:
    """A map-style dataset of :class:`Sample` s.

    Subclasses build ``self.items`` (cheap records, one per sample) in ``__init__`` and implement
    :meth:`load`, which reads the annotation and draws the prompts with the ``rng`` it is given, so
    a sample depends only on its index and that generator (what makes the mixture deterministic
    and resumable). :meth:`load_eval` gives the fixed evaluation prompts where a dataset has them.
    """

    source = ""
    split = ""

    def __init__(self):
        self.items: list = []

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source}:{self.split}, n={len(self)})"

    def image_path(self, i: int) -> Path:
        raise NotImplementedError

    def annotation_path(self, i: int) -> Path | None:
        return None

    def load(self, i: int, rng: random.Random) -> Sample:
        raise NotImplementedError

    def load_eval(self, i: int) -> Sample:
        raise NotImplementedError(f"{self.source} has no evaluation prompts")

    # ---- shared helpers ---------------------------------------------------------------------------

    def image_size(self, i: int) -> tuple[int, int]:
        """``(H, W)`` from the image header (no decoding); a missing or unreadable image is a BadSample."""
        path = self.image_path(i)
        if not path.is_file():
            raise BadSample(path, "image file not found")
        try:
            with Image.open(path) as im:
                w, h = im.size
        except Exception as exc:
            raise BadSample(path, f"not a readable image ({type(exc).__name__})") from None
        return h, w


def sample_without_replacement(items: list, k: int, rng: random.Random) -> list:
    return rng.sample(items, k) if len(items) > k else rng.sample(items, len(items))
