"""The engine every segmenter shares: the contract (:mod:`.contract`) and the registry (:mod:`.registry`)."""

from vlmsam.engine.contract import EncodedImage, SegmenterBase, check_request, mark_masks
from vlmsam.engine.registry import available, load, register

__all__ = ["EncodedImage", "SegmenterBase", "available", "check_request", "load", "mark_masks", "register"]
