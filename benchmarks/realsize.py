"""Real Qwen2.5-VL-3B layer shapes with a few layers and random weights, shared by the benchmarks.

Hidden 2048, MLP 11008, 16 heads / 2 KV heads, vocabulary 151,936; vision 1280 wide; a 448x448
image is 256 image tokens. Speed does not depend on the weights' values.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from vlmsam.sam.tiny import build_tiny_sam
from vlmsam.seg_token import SegTokenConfig, SegTokenModel
from vlmsam.vlm.tiny import build_tokenizer


class Force:
    """Greedy generation emits ``ids`` (then repeats the last), so runs compare like with like."""

    def __init__(self, ids):
        self.ids, self.i = ids, 0

    def __call__(self, input_ids, scores):
        scores[:] = -1e9
        scores[:, self.ids[min(self.i, len(self.ids) - 1)]] = 0
        self.i += 1
        return scores


def qwen2_5_vl_3b_config(tokenizer, text_layers: int, vision_layers: int) -> Qwen2_5_VLConfig:
    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=text_layers,
            num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
            eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"), bos_token_id=None,
        ),
        vision_config=dict(depth=vision_layers, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           window_size=112, fullatt_block_indexes=[vision_layers - 1]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )


def save_vlm(out: Path, text_layers: int, vision_layers: int, dtype=torch.bfloat16) -> Path:
    """A random VLM of these shapes saved to ``out`` with its tokenizer and a 448 x 448 image processor."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = build_tokenizer()
    Qwen2_5_VLForConditionalGeneration(qwen2_5_vl_3b_config(tok, text_layers, vision_layers)).to(dtype).save_pretrained(out)
    tok.save_pretrained(out)
    Qwen2VLImageProcessorPil(min_pixels=448 * 448, max_pixels=448 * 448).save_pretrained(out)
    return out


def build(root: Path, text_layers: int, vision_layers: int, dtype=torch.bfloat16) -> SegTokenModel:
    save_vlm(root / "vlm", text_layers, vision_layers, dtype)
    build_tiny_sam().save_pretrained(root / "sam")
    return SegTokenModel.build(SegTokenConfig(vlm=str(root / "vlm"), sam=str(root / "sam"))).eval()
