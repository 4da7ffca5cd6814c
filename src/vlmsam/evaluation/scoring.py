"""Scores of one evaluation: overall, and for ReasonSeg the short-query / long-query split."""

from __future__ import annotations

import numpy as np
import torch

from vlmsam.data.phrasings import grammar
from vlmsam.data.synth import KINDS
from vlmsam.metrics import IoUAccumulator


def union_of(masks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A request's predicted masks as one binary mask (none predicted -> all background).

    Benchmarks have one target per request; a model that answers with several ``[SEG]`` s is
    scored on everything it segmented."""
    if len(masks) == 0:
        return np.zeros(shape, dtype=np.uint8)
    return np.any(np.asarray(masks, dtype=bool), axis=0).astype(np.uint8)


def phrasing_families() -> list[str]:
    """Every wording family of the synthetic request grammar (``data/phrasings.json``)."""
    return sorted(grammar()["families"])


class Scorer:
    """Overall scores; the short/long split for ReasonSeg; per request kind where requests carry one
    (the synthetic scenes), with how often no mask was given: for requests that match nothing (the
    right answer) and for requests that do (a refusal). The second keeps the first honest: a model
    that refuses every request of one wording scores well on the first alone."""

    def __init__(self, split_by_length: bool):
        self.overall = IoUAccumulator()
        self.split = {"short_query": IoUAccumulator(), "long_query": IoUAccumulator()} if split_by_length else {}
        self.kinds = {k: IoUAccumulator() for k in KINDS}  # fixed keys: every rank all-reduces the same set
        self.phrasings = {f: IoUAccumulator() for f in phrasing_families()}  # held-out wordings scored apart
        # [none-requests answered without a mask, none-requests, real ones without a mask, real ones]
        self.no_mask = torch.zeros(4, dtype=torch.float64)

    def update(self, pred_masks: np.ndarray, target: np.ndarray, is_sentence: bool, kind: str | None = None,
               phrasing: str | None = None) -> float:
        pred = union_of(pred_masks, target.shape)
        iou = self.overall.update(pred[None], target[None])[0]
        if self.split:
            self.split["long_query" if is_sentence else "short_query"].update(pred[None], target[None])
        if phrasing in self.phrasings:
            self.phrasings[phrasing].update(pred[None], target[None])
        if kind in self.kinds:
            self.kinds[kind].update(pred[None], target[None])
            empty = float(len(pred_masks) == 0)
            self.no_mask += torch.tensor([empty, 1.0, 0.0, 0.0] if kind == "none" else [0.0, 0.0, empty, 1.0], dtype=torch.float64)
        return iou

    def all_reduce(self) -> Scorer:
        import torch.distributed as dist

        for acc in (self.overall, *self.split.values(), *self.kinds.values(), *self.phrasings.values()):
            acc.all_reduce()
        if dist.is_available() and dist.is_initialized():
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
            counts = self.no_mask.to(device)
            dist.all_reduce(counts)
            self.no_mask = counts.cpu()
        return self

    def metrics(self) -> dict:
        out = dict(self.overall.summary())
        for name, acc in self.split.items():
            out[name] = acc.summary()
        by_kind = {k: acc.summary() for k, acc in self.kinds.items() if acc.summary()["n"]}
        if by_kind:
            out["by_kind"] = by_kind
        by_phrasing = {f: acc.summary() for f, acc in self.phrasings.items() if acc.summary()["n"]}
        if by_phrasing:
            out["by_phrasing"] = by_phrasing
        if self.no_mask[1] > 0:
            out["no_target_no_mask_rate"] = float(self.no_mask[0] / self.no_mask[1])
        if self.no_mask[3] > 0:
            out["real_target_no_mask_rate"] = float(self.no_mask[2] / self.no_mask[3])
        return out
