"""Many requests about one image: one ``segment_many`` against separate ``segment`` calls.

Real Qwen2.5-VL-3B layer shapes with a few layers (``benchmarks/realsize.py``), random weights, bf16
on the CPU, a 448x448 image (256 image tokens), 8 requests, 32 new tokens each ending in a [SEG].
The image is encoded once for both (vision features and the prefix's key/value cache are in its
handle); ``segment_many`` then decodes the 8 requests as one batch on the shared prefix.

Last line: ``many_requests_speedup=<ratio>`` (separate calls' time over one segment_many's).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from realsize import Force, build  # noqa: E402

from vlmsam.seg_token.segmenter import SegTokenSegmenter  # noqa: E402

REQUESTS = ["the knife", "what would you cut bread with?", "the red cup on the left", "all the plates",
            "Which object keeps the food cold?", "the largest window", "the chair nearest the door", "the cat"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = build(Path(tmp), args.text_layers, args.vision_layers)
    seg = SegTokenSegmenter(model, max_new_tokens=args.new_tokens)
    image = (np.random.default_rng(0).random((448, 448, 3)) * 255).astype(np.uint8)
    t0 = time.perf_counter()
    encoded = seg.encode(image)
    encode_s = time.perf_counter() - t0
    answer = model.processor.answer_ids("Sure, it is " + "the thing " * 20)[: args.new_tokens - 1] + [model.config.seg_token_id]
    answer += [model.processor.im_end] * 4
    requests = (REQUESTS * 4)[: args.requests]

    seg.segment_many(encoded, requests[:2], logits_processor=Force(answer))  # warm-up
    t0 = time.perf_counter()
    separate = [seg.segment(encoded, r, logits_processor=Force(answer)) for r in requests]
    separate_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    together = seg.segment_many(encoded, requests, logits_processor=Force(answer))
    together_s = time.perf_counter() - t0
    same = all(a.text == b.text and a.num_masks == b.num_masks == 1 for a, b in zip(separate, together))
    print(f"encode once: {encode_s:.2f}s; {len(requests)} requests x {args.new_tokens} new tokens, text layers: {args.text_layers}")
    print(f"separate segment calls: {separate_s:.2f}s   one segment_many: {together_s:.2f}s   same answers and mask counts: {same}")
    print(f"many_requests_speedup={separate_s / together_s:.2f}")


if __name__ == "__main__":
    main()
