"""vlmsam: reasoning segmentation with a vision-language model and Segment Anything.

Heavy modules (torch models, transformers) are imported only when used.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "SegmentationResult": "vlmsam.result",
    "load_image": "vlmsam.io.images",
    "write_result": "vlmsam.io.writer",
    "IoUAccumulator": "vlmsam.metrics.iou",
    "SamBackend": "vlmsam.sam.backend",
    "SamPredictor": "vlmsam.sam.predictor",
    "VlmsamError": "vlmsam.errors",
    "SegTokenModel": "vlmsam.seg_token.model",
    "SegTokenConfig": "vlmsam.seg_token.config",
    "load_segmenter": "vlmsam.segmenter",
    "Segmenter": "vlmsam.segmenter",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlmsam' has no attribute {name!r}")
