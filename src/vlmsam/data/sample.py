"""The one sample type every loader yields, and the error a broken sample raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlmsam.errors import DatasetError
from vlmsam.result import IGNORE_INDEX as IGNORE  # noqa: F401  (the one ignore label, 255; data's name for it)

# What can be wrong with a sample, as `data check`, `evaluate`, `score` and `train` count it.
MISSING_IMAGE, UNREADABLE_IMAGE, BROKEN_ANNOTATION = "missing images", "unreadable images", "broken annotations"
PROBLEMS = (MISSING_IMAGE, UNREADABLE_IMAGE, BROKEN_ANNOTATION)
MAX_REASON = 300

Turn = tuple[str, str | None]  # (user text, assistant answer); a None answer is left for the model
Conversation = list[Turn]


class BadSample(DatasetError):
    """A sample that cannot be used: its image is missing or unreadable, or its annotation is broken.

    ``path`` names the file at fault so that a user can find and fix it; ``kind`` is one of
    :data:`PROBLEMS` (what the problem is counted as).
    """

    def __init__(self, path: str | Path, reason: str, kind: str = BROKEN_ANNOTATION):
        self.path = str(path)
        reason = " ".join(str(reason).split())  # one readable line, however long the offending value
        self.reason = reason if len(reason) <= MAX_REASON else reason[:MAX_REASON] + "..."
        self.kind = kind
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self):  # DataLoader workers send it back to the main process pickled
        return (type(self), (self.path, self.reason, self.kind))


@dataclass
class Sample:
    """One image with one or more conversations about it.

    Attributes:
        image: path of the image (loaders never decode it; the collator does, once).
        conversations: each a list of ``(user, answer)`` turns. Several conversations about one
            image share its encodings in a batch.
        masks: ``(N, H, W) uint8`` targets, 1 = object, 0 = background, 255 = ignore; one per
            ``[SEG]`` across all answers, in reading order. ``N`` may be 0.
        source: the dataset it came from (``reason_seg``, ``refcoco``, ``ade20k``, ...).
        name: a stable identifier (usually the image stem).
        meta: extra facts evaluation needs (the raw queries, ``is_sentence``, ...).
    """

    image: str | Path | object  # a path from loaders; arrays / PIL images work for in-memory use
    conversations: list[Conversation]
    masks: np.ndarray
    source: str = ""
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.masks.ndim != 3 or self.masks.dtype != np.uint8:
            raise ValueError(f"masks must be (N, H, W) uint8, got {self.masks.shape} {self.masks.dtype}")

    @property
    def where(self) -> str:
        """What to name in an error: the image path, else the sample's name."""
        if isinstance(self.image, (str, Path)):
            return str(self.image)
        return self.name or "<in-memory image>"

    @property
    def seg_count(self) -> int:
        return sum((answer or "").count("[SEG]") for conv in self.conversations for _, answer in conv)


def empty_masks(height: int, width: int) -> np.ndarray:
    return np.zeros((0, height, width), dtype=np.uint8)
