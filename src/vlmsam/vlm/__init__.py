"""Vision-language model adapters: prompt building, image tokens, loading (Qwen2-VL, Qwen2.5-VL, Qwen3-VL)."""

from vlmsam.vlm.processor import SEG_TOKEN, VlmProcessor

__all__ = ["SEG_TOKEN", "VlmProcessor"]
