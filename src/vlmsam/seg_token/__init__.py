"""The [SEG]-token segmenter (LISA / Qwen-SAM lineage)."""

from vlmsam.seg_token.config import SegTokenConfig
from vlmsam.seg_token.model import SegSample, SegTokenModel

__all__ = ["SegSample", "SegTokenConfig", "SegTokenModel"]
