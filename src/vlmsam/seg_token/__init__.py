"""The [SEG]-token segmenter (LISA / Qwen-SAM lineage)."""

from vlmsam.seg_token.config import SegTokenConfig
from vlmsam.seg_token.model import SegTokenModel

__all__ = ["SegTokenConfig", "SegTokenModel"]
