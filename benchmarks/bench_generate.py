"""Answer + mask generation with the KV cache vs. without (what the published code does).

Real Qwen2.5-VL-3B layer shapes with a few layers (``benchmarks/realsize.py``), random weights, on
the CPU; a 448x448 image (256 image tokens) and 64 new tokens, forced so that both runs produce the
same sequence with a [SEG] near the end. Without the cache every step runs the whole sequence again.

Last line: ``kv_cache_speedup=<ratio>``.
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

from vlmsam.seg_token.segmenter import SegTokenSegmenter, seg_prompt  # noqa: E402


def uncached_states(model, prefix, prompt: str, n_new: int, force: Force) -> torch.Tensor:
    """Greedy decoding that re-runs the full sequence at every step (``use_cache=False``)."""
    p = model.processor
    ids = p.encode([(prompt, None)], image_inputs=(prefix.pixel_values, prefix.grid, prefix.n_tokens)).input_ids[None]
    states = []
    for _ in range(n_new + 1):
        out = model.vlm(**model.vlm_inputs(ids), mm_encoder_outputs={"image": prefix.features}, image_grid_thw=prefix.grid,
                        use_cache=False, output_hidden_states=True, logits_to_keep=1)
        if int(ids[0, -1]) == model.config.seg_token_id:
            states.append(out.hidden_states[-1][0, -1])
        token = int(force(ids, out.logits[:, -1].float()).argmax(-1))
        if token == p.im_end:
            break
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return torch.stack(states)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = build(Path(tmp), args.text_layers, args.vision_layers)
    seg = SegTokenSegmenter(model, max_new_tokens=args.new_tokens)
    image = (np.random.default_rng(0).random((448, 448, 3)) * 255).astype(np.uint8)
    encoded = seg.encode(image)
    answer = model.processor.answer_ids("Sure, it is " + "the thing " * 40)[: args.new_tokens - 2] + [model.config.seg_token_id]
    answer += [model.processor.im_end] * 4
    request = "Please segment what you would use to cut the bread."

    def cached() -> tuple[float, torch.Tensor]:
        t0 = time.perf_counter()
        (gen,) = seg.generate(encoded, [request], logits_processor=Force(answer))
        with torch.no_grad():
            model.masks_from_states(gen.states.to(torch.bfloat16), encoded.sam)
        return time.perf_counter() - t0, gen.states.float()

    def plain() -> tuple[float, torch.Tensor]:
        t0 = time.perf_counter()
        with torch.no_grad():
            states = uncached_states(model, encoded.vlm, seg_prompt(request), args.new_tokens, Force(answer))
            model.masks_from_states(states, encoded.sam)
        return time.perf_counter() - t0, states.float()

    cached()  # warm-up
    cached_s, cached_states = cached()
    plain_s, plain_states = plain()
    # bf16 sums in another order: the [SEG] states agree to bf16 precision, not bit for bit.
    rel = float((cached_states - plain_states).norm() / plain_states.norm())
    print(f"new tokens: {args.new_tokens}, text layers: {args.text_layers}")
    print(f"with KV cache: {cached_s:.2f}s   use_cache=False: {plain_s:.2f}s   [SEG] state relative difference: {rel:.1e}")
    print(f"kv_cache_speedup={plain_s / cached_s:.2f}")


if __name__ == "__main__":
    main()
