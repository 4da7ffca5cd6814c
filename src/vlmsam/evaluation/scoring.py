"""Scores of one evaluation: overall, and for ReasonSeg the short-query / long-query split."""

from __future__ import annotations

import numpy as np

from vlmsam.metrics import IoUAccumulator


def union_of(masks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A request's predicted masks as one binary mask (none predicted -> all background).

    Benchmarks have one target per request; a model that answers with several ``[SEG]`` s is
    scored on everything it segmented."""
    if len(masks) == 0:
        return np.zeros(shape, dtype=np.uint8)
    return np.any(np.asarray(masks, dtype=bool), axis=0).astype(np.uint8)


class Scorer:
    def __init__(self, split_by_length: bool):
        self.overall = IoUAccumulator()
        self.split = {"short_query": IoUAccumulator(), "long_query": IoUAccumulator()} if split_by_length else {}

    def update(self, pred_masks: np.ndarray, target: np.ndarray, is_sentence: bool) -> float:
        pred = union_of(pred_masks, target.shape)
        iou = self.overall.update(pred[None], target[None])[0]
        if self.split:
            self.split["long_query" if is_sentence else "short_query"].update(pred[None], target[None])
        return iou

    def all_reduce(self) -> Scorer:
        self.overall.all_reduce()
        for acc in self.split.values():
            acc.all_reduce()
        return self

    def metrics(self) -> dict:
        out = dict(self.overall.summary())
        for name, acc in self.split.items():
            out[name] = acc.summary()
        return out
