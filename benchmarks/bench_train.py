"""Training-step time with and without the SAM embedding cache, at real SAM ViT-B shapes.

SAM is transformers' ``SamModel`` at ViT-B size (1024x1024 input, 12 layers, random weights) and
frozen, as in LoRA fine-tuning; the VLM is the tiny Qwen2.5-VL so that the step time shows what
the SAM encoder costs. ReasonSeg-layout data with 640x480 images, batch 1, CPU. Without the cache
every step runs the ViT-B encoder; with it, the step reads the embedding back from disk.

Last line: ``sam_cache_speedup=<ratio>`` (median uncached step / median cached step).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import SamConfig, SamModel
from transformers.utils import logging as hf_logging

from vlmsam.data.mixture import Mixture
from vlmsam.data.reason_seg import ReasonSegDataset
from vlmsam.seg_token import SegTokenConfig, SegTokenModel
from vlmsam.sam.embedding_cache import SamEmbeddingCache
from vlmsam.vlm.tiny import save_tiny_vlm


def write_images(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    folder = root / "reason_seg" / "ReasonSeg" / "train"
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(folder / f"x{i}.jpg")
        shapes = [{"label": "t", "points": [[100, 100], [300, 120], [250, 300]]}]
        (folder / f"x{i}.json").write_text(json.dumps({"text": ["the triangle"], "is_sentence": False, "shapes": shapes}))


def step_times(model, mixture, steps: int) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    model.train()
    times = []
    for k in range(steps + 1):  # the first step warms up
        t = time.perf_counter()
        batch = model.collator([mixture[k]])
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return times[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root / "data", args.images)
        SamModel(SamConfig()).save_pretrained(root / "sam")  # ViT-B shapes
        vlm = save_tiny_vlm(root / "vlm", "qwen2_5_vl")
        torch.manual_seed(0)
        model = SegTokenModel.build(SegTokenConfig(vlm=str(vlm), sam=str(root / "sam"), lora_r=8))
        ds = ReasonSegDataset(root / "data", "train")
        mixture = Mixture({"reason_seg": [ds]}, {"reason_seg": 1}, seed=0, prepare=model.collator.prepare)
        print(f"SAM: {sum(p.numel() for p in model.sam.parameters()) / 1e6:.1f}M parameters, input "
              f"{model.sam.config.vision_config.image_size}px, {model.sam.config.vision_config.num_hidden_layers} layers")
        uncached = step_times(model, mixture, args.steps)
        print("step without cache: " + ", ".join(f"{t:.2f} s" for t in uncached))
        t = time.perf_counter()
        cache = SamEmbeddingCache(root / "cache")
        cache.fill(model.sam_backend, [ds.image_path(i) for i in range(len(ds))], progress=False)
        fill = time.perf_counter() - t
        model.use_sam_cache(cache)  # the collator stops preparing SAM pixels too
        print(f"filling the cache for {args.images} images: {fill:.1f} s (once per dataset, sharded under torchrun)")
        cached = step_times(model, mixture, args.steps)
        print("step with cache:    " + ", ".join(f"{t:.3f} s" for t in cached) + f"  (cache hits {cache.hits}, misses {cache.misses})")
    print(f"sam_cache_speedup={np.median(uncached) / np.median(cached):.1f}")


if __name__ == "__main__":
    main()
