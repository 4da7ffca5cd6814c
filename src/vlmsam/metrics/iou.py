"""Reasoning-segmentation metrics, with LISA's definitions (the numbers every paper reports).

Per (prediction, ground truth) pair: pixels where the ground truth is 255 are ignored;
``I`` = foreground intersection, ``U`` = foreground union; IoU = I / (U + 1e-5), and a pair with
U = 0 (nothing predicted, nothing to find) scores 1.0.

- gIoU = the mean of per-pair IoU over all pairs (several masks of one image are several pairs).
- cIoU = ΣI / (ΣU + 1e-10) over the whole set.

:class:`IoUAccumulator` keeps only sums, so shards of a dataset scored on different ranks
combine exactly with :meth:`IoUAccumulator.all_reduce`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vlmsam.result import IGNORE_INDEX  # the one ignore label (255)

PAIR_EPS = 1e-5
SET_EPS = 1e-10


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def intersection_union(pred, target, ignore_index: int = IGNORE_INDEX) -> tuple[int, int]:
    """Foreground intersection and union of one pair.

    Args:
        pred: ``(H, W)`` bool or 0/1 prediction.
        target: ``(H, W)`` ground truth with values 0, 1 and ``ignore_index``.
    """
    pred = _as_tensor(pred)
    target = _as_tensor(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    valid = target != ignore_index
    pred_fg = (pred.bool() if pred.dtype == torch.bool else pred != 0) & valid
    target_fg = (target == 1) & valid
    intersection = int((pred_fg & target_fg).sum())
    union = int(pred_fg.sum()) + int(target_fg.sum()) - intersection
    return intersection, union


def mask_iou(masks: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(K,)`` IoU of each of ``masks (K, H, W)`` with one ``target (H, W)``, both boolean (no ignore
    label; 0 where both are empty): proposals against a shape, SAM's outputs against their target."""
    m, t = masks.flatten(1).bool(), target.flatten().bool()[None]
    inter = (m & t).sum(1).float()
    return inter / (m | t).sum(1).float().clamp_min(1)


def pair_iou(intersection: int, union: int) -> float:
    """LISA's per-pair IoU: I / (U + 1e-5), and 1.0 when U = 0."""
    return 1.0 if union == 0 else intersection / (union + PAIR_EPS)


@dataclass
class IoUAccumulator:
    """Running sums for gIoU and cIoU.

    ``update`` takes one image's predicted masks and target masks (same count, same order).
    """

    intersection: float = 0.0
    union: float = 0.0
    iou_sum: float = 0.0
    count: int = 0

    def update(self, preds, targets, ignore_index: int = IGNORE_INDEX) -> list[float]:
        """Add pairs. ``preds`` and ``targets`` are ``(N, H, W)`` (or one ``(H, W)`` pair each).

        Returns the per-pair IoUs that were added.
        """
        preds, targets = _as_tensor(preds), _as_tensor(targets)
        if preds.ndim == 2:
            preds, targets = preds[None], targets[None]
        if preds.shape[0] != targets.shape[0]:
            raise ValueError(f"{preds.shape[0]} predicted masks for {targets.shape[0]} targets: pair them first")
        ious = []
        for pred, target in zip(preds, targets):
            i, u = intersection_union(pred, target, ignore_index)
            self.intersection += i
            self.union += u
            iou = pair_iou(i, u)
            self.iou_sum += iou
            self.count += 1
            ious.append(iou)
        return ious

    def merge(self, other: IoUAccumulator) -> IoUAccumulator:
        self.intersection += other.intersection
        self.union += other.union
        self.iou_sum += other.iou_sum
        self.count += other.count
        return self

    @property
    def giou(self) -> float:
        return self.iou_sum / self.count if self.count else 0.0

    @property
    def ciou(self) -> float:
        return self.intersection / (self.union + SET_EPS)

    def all_reduce(self) -> IoUAccumulator:
        """Sum the accumulators of every rank in place (no-op outside torch.distributed).

        Sums travel as float64 so that pixel counts of large sets stay exact.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        sums = torch.tensor([self.intersection, self.union, self.iou_sum, self.count], dtype=torch.float64, device=device)
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        self.intersection, self.union, self.iou_sum, count = sums.tolist()
        self.count = int(round(count))
        return self

    def summary(self) -> dict[str, float | int]:
        return {"giou": self.giou, "ciou": self.ciou, "n": self.count}
