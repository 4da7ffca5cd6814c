"""GRPO rollouts: one group of G completions sharing the image prefix, against trl's default generation.

trl's own (non-vLLM) path renders the group's G identical prompts, runs the processor over G copies of the
image and calls ``model.generate`` on the batch: the vision tower and the prompt's prefill run G times.
vlmsam's rollouts (``grpo.rollouts: shared``, vlmsam/train/rollouts.py) encode the image and its prefix
once and sample the G completions together from that key/value cache. Both sample G x N new tokens at
temperature 1 (the end token suppressed, so both generate exactly N).

Real Qwen2.5-VL-3B layer shapes (``benchmarks/realsize.py``; a few layers by default, all 36 / 32 with
``--text-layers 36 --vision-layers 32``), random weights, a 448x448 image, G = 8, 64 new tokens.

``--tiny`` runs the same comparison on a tiny random Qwen2.5-VL (the test suite does, to keep the script working).

Last line: ``rollout_speedup=<ratio>`` (trl's default generation time over ours).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from realsize import qwen2_5_vl_3b_config  # noqa: E402

from vlmsam.train.rollouts import sampler, shared_rollouts  # noqa: E402
from vlmsam.vlm.processor import VlmProcessor  # noqa: E402
from vlmsam.vlm.tiny import build_tokenizer  # noqa: E402
from vlmsam.vlm.trl_processor import TrlVlmProcessor  # noqa: E402

PROMPT = "Locate the knife in this image and output the bbox_2d and point_2d of each match in JSON format."


def build(root: Path, text_layers: int, vision_layers: int, size: int, dtype, tiny: bool = False):
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vlmsam.vlm.tiny import tiny_config

    tok = build_tokenizer()
    config = tiny_config("qwen2_5_vl", tok) if tiny else qwen2_5_vl_3b_config(tok, text_layers, vision_layers)
    model = Qwen2_5_VLForConditionalGeneration(config).to(dtype).eval()
    image_processor = Qwen2VLImageProcessorPil(min_pixels=size * size, max_pixels=size * size)
    return model, VlmProcessor(image_processor, tok)


class NoEnd:
    """Keeps the end token from being drawn, so every completion has exactly the asked length."""

    def __init__(self, end: int):
        self.end = end

    def __call__(self, input_ids, scores):
        scores[:, self.end] = -float("inf")
        return scores


def trl_default(model, processor, image, group: int, new_tokens: int):
    """What trl's GRPOTrainer does without vLLM: the processor over G copies, then one ``generate``."""
    from transformers import LogitsProcessorList

    trl_proc = TrlVlmProcessor.of(processor)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = trl_proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = trl_proc(images=[[image]] * group, text=[text] * group, padding=True, padding_side="left")
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                             logits_processor=LogitsProcessorList([NoEnd(processor.im_end)]))
    return out[:, inputs["input_ids"].shape[1]:]


def ours(model, processor, image, group: int, new_tokens: int):
    prompt = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": PROMPT}]}]
    draw, no_end = sampler(1.0), NoEnd(processor.im_end)  # the same distribution as trl's side, drawn our way
    return shared_rollouts(model, processor, [prompt] * group, group, max_new_tokens=new_tokens, temperature=1.0,
                           draw=lambda scores: draw(no_end(None, scores)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Qwen2.5-VL instead of 3B layer shapes")
    args = parser.parse_args()
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    with tempfile.TemporaryDirectory() as tmp:
        model, processor = build(Path(tmp), args.text_layers, args.vision_layers, args.size, dtype, args.tiny)
    image = Image.fromarray((np.random.default_rng(0).random((args.size, args.size, 3)) * 255).astype(np.uint8))
    ours(model, processor, image, 2, 4)  # warm-up, both paths
    trl_default(model, processor, image, 2, 4)
    t0 = time.perf_counter()
    mine = ours(model, processor, image, args.group, args.new_tokens)
    t1 = time.perf_counter()
    theirs = trl_default(model, processor, image, args.group, args.new_tokens)
    t2 = time.perf_counter()
    assert all(len(c) == args.new_tokens for c in mine["completion_ids"]) and theirs.shape[1] == args.new_tokens
    shapes = "a tiny Qwen2.5-VL" if args.tiny else f"{args.text_layers} text / {args.vision_layers} vision layers of Qwen2.5-VL-3B"
    print(f"group {args.group}, {args.new_tokens} new tokens, image {args.size}x{args.size}, {shapes}, {args.dtype}")
    print(f"shared prefix (vlmsam): {t1 - t0:.2f} s    trl default (G copies + generate): {t2 - t1:.2f} s")
    print(f"rollout_speedup={(t2 - t1) / (t1 - t0):.2f}")


if __name__ == "__main__":
    main()
