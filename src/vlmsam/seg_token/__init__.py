"""The [SEG]-token segmenter (LISA / Qwen-SAM lineage)."""

from vlmsam.seg_token.config import SegTokenConfig

__all__ = ["SegTokenConfig", "SegTokenModel"]


def __getattr__(name: str):
    # The model (torch, transformers) loads on first use: the registry imports this package to read the
    # design's spec, and a flag the design does not take is reported before anything heavy.
    if name == "SegTokenModel":
        from vlmsam.seg_token.model import SegTokenModel

        return SegTokenModel
    raise AttributeError(f"module 'vlmsam.seg_token' has no attribute {name!r}")
