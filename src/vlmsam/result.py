"""The one result type every segmenter returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: The one ignore label of every target: pixels that count neither as object nor as background (LISA's 255).
IGNORE_INDEX = 255


@dataclass
class SegmentationResult:
    """Masks and the model's answer for one request on one image.

    Attributes:
        masks: ``(N, H, W) bool`` in original-image pixels; ``N == 0`` means "no object".
        boxes: ``(N, 4) float32``, ``XYXY`` in original-image pixels (the prompt box where one was
            given, else the tight box around each mask; all zeros for an empty mask).
        scores: ``(N,) float32``, the model's confidence per mask (SAM's predicted IoU, say).
        text: the model's text answer ("" when a segmenter produces none).
        labels: one optional label per mask ("" where unknown).
        timings: seconds per stage, e.g. ``{"encode_image": 0.8, "decode_masks": 0.05}``.
        info: design-specific notes, e.g. ``{"reason": "object 2: degenerate box"}`` where a grounding
            answer gave fewer boxes than it named.
        extra_images: pictures a person may want beside the masks (PIL images by name, e.g. the
            numbered "marks" image a VLM chose from); ``write_result`` saves each as ``{stem}_{name}.png``.
    """

    masks: np.ndarray
    boxes: np.ndarray | None = None
    scores: np.ndarray | None = None
    text: str = ""
    labels: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    extra_images: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks)
        if self.masks.ndim != 3:
            raise ValueError(f"masks must be (N, H, W), got shape {self.masks.shape}")
        self.masks = self.masks.astype(bool, copy=False)
        n = self.num_masks
        self.boxes = boxes_from_masks(self.masks) if self.boxes is None else np.asarray(self.boxes, np.float32)
        self.boxes = self.boxes.reshape(n, 4)
        self.scores = np.ones(n, np.float32) if self.scores is None else np.asarray(self.scores, np.float32)
        if self.scores.shape != (n,):
            raise ValueError(f"scores must be ({n},), got shape {self.scores.shape}")
        if not self.labels:
            self.labels = [""] * n
        if len(self.labels) != n:
            raise ValueError(f"labels must have {n} entries, got {len(self.labels)}")

    @property
    def num_masks(self) -> int:
        return int(self.masks.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the original image."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    @classmethod
    def empty(cls, image_size: tuple[int, int], text: str = "", **kwargs) -> SegmentationResult:
        """The "no object" result for an image of ``image_size = (H, W)``."""
        return cls(masks=np.zeros((0, *image_size), bool), text=text, **kwargs)


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """Tight ``XYXY`` boxes ``(N, 4) float32`` around ``(N, H, W)`` masks, in pixel-edge coordinates
    (a single pixel at (x, y) gives ``[x, y, x + 1, y + 1]``); an empty mask gives zeros."""
    boxes = np.zeros((masks.shape[0], 4), np.float32)
    for i, mask in enumerate(masks):
        ys = np.flatnonzero(mask.any(axis=1))
        xs = np.flatnonzero(mask.any(axis=0))
        if len(xs):
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes
