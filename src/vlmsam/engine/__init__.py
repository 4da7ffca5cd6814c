"""The engine every segmenter shares: the contract (:mod:`.contract`), what a design declares
(:mod:`.spec`) and the registry of designs (:mod:`.registry`)."""

from vlmsam.engine.contract import EncodedImage, SegmenterBase, SegmentOptions, check_request, mark_masks
from vlmsam.engine.registry import available, design, load, register
from vlmsam.engine.spec import BuildSpec, Capabilities, Design, TrainingSpec, UsageError

__all__ = ["BuildSpec", "Capabilities", "Design", "EncodedImage", "SegmentOptions", "SegmenterBase", "TrainingSpec",
           "UsageError", "available", "check_request", "design", "load", "mark_masks", "register"]
