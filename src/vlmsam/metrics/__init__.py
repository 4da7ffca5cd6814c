"""gIoU / cIoU exactly as LISA computes them."""

from vlmsam.metrics.iou import IGNORE_INDEX, IoUAccumulator, intersection_union, pair_iou

__all__ = ["IGNORE_INDEX", "IoUAccumulator", "intersection_union", "pair_iou"]
