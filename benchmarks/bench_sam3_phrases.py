"""SAM 3: k noun phrases on one image, the vision pass reused, against k independent calls.

Independent calls (what Meta's ``Sam3Processor`` costs when each phrase goes through ``set_image`` and
``set_text_prompt`` anew, and what transformers' ``Sam3Model(pixel_values=..., input_ids=...)`` costs per
phrase) run the ViT once per phrase. vlmsam's ``Sam3Backend`` encodes the image once and sends the k
phrases through the detector as one batch (``segment_phrases``).

Real SAM 3 shapes (transformers' ``Sam3Config()`` defaults: ViT 1024 wide, 32 layers, 1008 x 1008 input,
CLIP text encoder, 200 queries), random weights, 8 phrases. ``--vit-layers`` lowers the ViT's depth for a
quick look (the global-attention layers stay spread over it).

Last line: ``sam3_phrase_reuse_speedup=<ratio>`` (independent calls' time over the reused pass's).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from vlmsam.sam.sam3_backend import Sam3Backend
from vlmsam.sam.sam3_tiny import build_sam3_tokenizer

PHRASES = ["knife", "cutting board", "bread", "red cup", "person", "fork", "plate", "window"]


def build(vit_layers: int) -> Sam3Backend:
    from transformers import Sam3Config, Sam3Model

    config = Sam3Config()
    vit = config.vision_config.backbone_config
    if vit_layers != vit.num_hidden_layers:
        step = max(1, vit_layers // 4)
        vit.num_hidden_layers = vit_layers
        vit.global_attn_indexes = sorted({min(vit_layers - 1, i) for i in range(step - 1, vit_layers, step)})
    torch.manual_seed(0)
    return Sam3Backend(Sam3Model(config).eval(), build_sam3_tokenizer(" ".join(PHRASES).split()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vit-layers", type=int, default=32)
    parser.add_argument("--phrases", type=int, default=8)
    parser.add_argument("--size", type=int, default=768, help="the image's side before SAM 3 resizes it to 1008")
    args = parser.parse_args()
    sam3 = build(args.vit_layers)
    phrases = (PHRASES * 4)[: args.phrases]
    image = Image.fromarray((np.random.default_rng(0).random((args.size, args.size, 3)) * 255).astype(np.uint8))
    sam3.segment_phrases(sam3.encode(image), phrases[:1], threshold=0.0)  # warm-up
    t0 = time.perf_counter()
    for phrase in phrases:  # each call its own vision pass
        apart = sam3.segment_phrase(sam3.encode(image), phrase, threshold=0.0)
    independent = time.perf_counter() - t0
    t0 = time.perf_counter()
    together = sam3.segment_phrases(sam3.encode(image), phrases, threshold=0.0)
    reused = time.perf_counter() - t0
    assert np.array_equal(apart.queries, together[-1].queries)  # the same instances either way
    print(f"SAM 3, ViT {args.vit_layers} layers, {len(phrases)} phrases on one {args.size}^2 image (1008^2 input)")
    print(f"independent calls: {independent:.2f} s ({independent / len(phrases):.2f} s a phrase)")
    print(f"one vision pass, phrases batched: {reused:.2f} s")
    print(f"sam3_phrase_reuse_speedup={independent / reused:.2f}")


if __name__ == "__main__":
    main()
