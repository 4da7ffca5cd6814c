"""Answer + mask generation with the KV cache vs. without (what the published code does).

Real Qwen2.5-VL-3B layer shapes (hidden 2048, MLP 11008, 16 heads / 2 KV heads, vocabulary
151,936; vision 1280 wide) with a few layers each, random weights, on the CPU; a 448x448 image
(256 image tokens) and 64 new tokens, forced so that both runs produce the same sequence with a
[SEG] near the end. Speed does not depend on the weights' values.

Last line: ``kv_cache_speedup=<ratio>``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LogitsProcessorList, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from vlmsam.sam.tiny import build_tiny_sam
from vlmsam.seg_token import SegTokenConfig, SegTokenModel
from vlmsam.vlm.tiny import build_tokenizer


class Force:
    def __init__(self, ids):
        self.ids, self.i = ids, 0

    def __call__(self, input_ids, scores):
        scores[:] = -1e9
        scores[:, self.ids[min(self.i, len(self.ids) - 1)]] = 0
        self.i += 1
        return scores


def build(root: Path, text_layers: int, vision_layers: int) -> SegTokenModel:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = build_tokenizer()
    ids = tok.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
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
    Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16).save_pretrained(root / "vlm")
    tok.save_pretrained(root / "vlm")
    Qwen2VLImageProcessorPil(min_pixels=448 * 448, max_pixels=448 * 448).save_pretrained(root / "vlm")
    build_tiny_sam().save_pretrained(root / "sam")
    return SegTokenModel.build(SegTokenConfig(vlm=str(root / "vlm"), sam=str(root / "sam"))).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = build(Path(tmp), args.text_layers, args.vision_layers)
    image = (np.random.default_rng(0).random((448, 448, 3)) * 255).astype(np.uint8)
    model.set_image(image)
    answer = model.processor.answer_ids("Sure, it is " + "the thing " * 40)[: args.new_tokens - 2] + [model.config.seg_token_id]
    answer += [model.processor.im_end] * 4
    request = "Please segment what you would use to cut the bread. Please output segmentation mask."

    def run(use_cache: bool) -> tuple[float, torch.Tensor]:
        t0 = time.perf_counter()
        with torch.no_grad():
            tokens, states = model.generate_with_states(
                request, max_new_tokens=args.new_tokens, use_cache=use_cache,
                logits_processor=LogitsProcessorList([Force(answer)]),
            )
            emb = model.sam_backend.embedding
            logits, _ = model.masks_from_states(states, emb)
        return time.perf_counter() - t0, states.float()

    run(True)  # warm-up
    cached_s, cached_states = run(True)
    plain_s, plain_states = run(False)
    # bf16 sums in another order: the [SEG] states agree to bf16 precision, not bit for bit.
    rel = float((cached_states - plain_states).norm() / plain_states.norm())
    print(f"prompt tokens: {len(model.processor.encode([(request, None)], image_inputs=model._image[1:4]).input_ids)}, "
          f"new tokens: {args.new_tokens}, text layers: {args.text_layers}")
    print(f"with KV cache: {cached_s:.2f}s   use_cache=False: {plain_s:.2f}s   [SEG] state relative difference: {rel:.1e}")
    print(f"kv_cache_speedup={plain_s / cached_s:.2f}")


if __name__ == "__main__":
    main()
