"""What every loader provides: an index built once, and samples built on demand from it."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

from vlmsam.data.sample import MISSING_IMAGE, UNREADABLE_IMAGE, BadSample, Sample


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
        # Things worth a user's attention that do not make a sample unusable (an all-zero target,
        # a class list that differs from the published one): where -> what. `data check` lists them.
        self.notes: dict[str, str] = {}

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
        """``(H, W)`` of the image as displayed, from its header (no decoding).

        An EXIF orientation that turns the picture by 90 degrees swaps the header's sides: targets
        are built at the upright size, as the image loader (and the published ``cv2.imread``)
        returns the image. A missing or unreadable image is a BadSample.
        """
        path = self.image_path(i)
        if not path.is_file():
            raise BadSample(path, "image file not found", MISSING_IMAGE)
        try:
            with Image.open(path) as im:
                w, h = im.size
                orientation = exif_orientation(im)
        except Exception as exc:
            raise BadSample(path, f"not a readable image ({type(exc).__name__})", UNREADABLE_IMAGE) from None
        return (w, h) if orientation in TRANSPOSING_ORIENTATIONS else (h, w)


# EXIF orientations 5-8 include a quarter turn (transpose, rotate 270, transverse, rotate 90).
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 when absent or unreadable: a broken EXIF block is ignored, as the
    image loader ignores it)."""
    try:
        value = image.getexif().get(0x0112, 1)
        return int(value) if isinstance(value, int) else 1
    except Exception:
        return 1


def sample_without_replacement(items: list, k: int, rng: random.Random) -> list:
    return rng.sample(items, k) if len(items) > k else rng.sample(items, len(items))
