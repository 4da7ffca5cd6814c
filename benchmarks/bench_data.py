"""Data-path throughput: each loader alone, and the collated mixture with 0 and 2 workers,
set against the time of one training step of a tiny [SEG] model on the same batches.

The tree is written on the fly with realistic image sizes (640x480 JPEGs, 512x512 ADE20K label
maps): ReasonSeg, refcoco, ADE20K and LLaVA VQA. The collator prepares inputs for the tiny
model's processors (what `make demo`-scale training reads); a second mixture line uses real-size
preprocessing (Qwen2.5-VL at up to 448x448, SAM at 1024x1024) for context.

Last line: ``data_samples_per_s=<n>`` (the mixture, collated, 2 workers, tiny processors).
"""

from __future__ import annotations

import argparse
import json
import pickle
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from vlmsam.data.collate import Collator
from vlmsam.data.mixture import Mixture, ResumableSampler
from vlmsam.data.registry import build_family
from transformers import SamConfig
from transformers.utils import logging as hf_logging

from vlmsam.sam.preprocess import build_image_processor
from vlmsam.sam.tiny import build_tiny_sam
from vlmsam.seg_token import SegTokenConfig, SegTokenModel
from vlmsam.vlm.processor import VlmProcessor
from vlmsam.vlm.tiny import save_tiny_vlm

H, W = 480, 640


def photo(path: Path, rng, h=H, w=W) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    Image.fromarray(base).resize((w, h), Image.BILINEAR).save(path, quality=90)


def polygon(rng, h=H, w=W):
    cx, cy, r = rng.integers(100, w - 100), rng.integers(100, h - 100), rng.integers(30, 90)
    angles = np.sort(rng.random(12) * 2 * np.pi)
    return [[float(cx + r * np.cos(a)), float(cy + r * np.sin(a))] for a in angles]


def write_tree(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    rs = root / "reason_seg" / "ReasonSeg" / "train"
    coco = root / "refer_seg" / "images" / "mscoco" / "images" / "train2014"
    images, anns, refs = [], [], []
    for i in range(n):
        photo(rs / f"r{i}.jpg", rng)
        shapes = [{"label": "target", "points": polygon(rng)} for _ in range(3)] + [{"label": "ignore", "points": polygon(rng)}]
        (rs / f"r{i}.json").write_text(json.dumps({"text": ["the thing you would sit on", "a chair"], "is_sentence": True, "shapes": shapes}))
        photo(coco / f"c{i}.jpg", rng)
        images.append({"id": i, "file_name": f"c{i}.jpg", "height": H, "width": W})
        for k in range(3):
            anns.append({"id": 10 * i + k, "image_id": i, "category_id": 1, "segmentation": [sum(polygon(rng), [])]})
            refs.append({"ref_id": 10 * i + k, "ann_id": 10 * i + k, "image_id": i, "split": "train",
                         "sentences": [{"sent": f"object number {k}"}, {"sent": "the other one"}]})
        photo(root / "ade20k" / "images" / "training" / f"a{i}.jpg", rng, 512, 512)
        label = np.zeros((512, 512), np.uint8)
        for k in range(5):
            ImageDraw.Draw(im := Image.fromarray(label)).polygon([tuple(p) for p in polygon(rng, 512, 512)], fill=int(rng.integers(1, 151)))
            label = np.asarray(im)
        (root / "ade20k" / "annotations" / "training").mkdir(parents=True, exist_ok=True)
        Image.fromarray(label).save(root / "ade20k" / "annotations" / "training" / f"a{i}.png")
        photo(root / "coco" / "train2017" / f"v{i}.jpg", rng)
    (root / "refer_seg" / "refcoco").mkdir(parents=True, exist_ok=True)
    (root / "refer_seg" / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (root / "refer_seg" / "refcoco" / "instances.json").write_text(json.dumps({"images": images, "annotations": anns}))
    (root / "llava_dataset").mkdir(parents=True, exist_ok=True)
    (root / "llava_dataset" / "llava_instruct_150k.json").write_text(json.dumps([
        {"image": f"v{i}.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat is shown?"},
                                                 {"from": "gpt", "value": "A noisy picture of nothing in particular."}]}
        for i in range(n)]))


def rate(fn, n: int) -> float:
    t = time.perf_counter()
    for k in range(n):
        fn(k)
    return n / (time.perf_counter() - t)


def mixture_rate(mix, collate, batch_size: int, workers: int, n_batches: int) -> float:
    loader = torch.utils.data.DataLoader(mix, batch_size=batch_size, sampler=ResumableSampler(len(mix)),
                                         collate_fn=collate, num_workers=workers)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    t = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches * batch_size / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--draws", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(2)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_tree(root, args.images)
        families = {
            "reason_seg": build_family("reason_seg", root),
            "refer_seg": build_family("refer_seg", root, "refcoco"),
            "sem_seg": build_family("sem_seg", root, "ade20k"),
            "vqa": build_family("vqa", root),
        }
        print(f"{'loader (annotation -> sample)':<34}{'samples/s':>10}")
        for family, (ds,) in families.items():
            r = rate(lambda k, ds=ds: ds.load(k % len(ds), random.Random(k)), args.draws)
            print(f"  {ds.source:<32}{r:>10.1f}")

        bases = root / "bases"
        build_tiny_sam().save_pretrained(bases / "sam")
        vlm_dir = save_tiny_vlm(bases / "vlm", "qwen2_5_vl")
        torch.manual_seed(0)
        model = SegTokenModel.build(SegTokenConfig(vlm=str(vlm_dir), sam=str(bases / "sam"), lora_r=8))
        collate = model.collator
        rates = {"reason_seg": 1, "refer_seg": 3, "sem_seg": 9, "vqa": 1}
        mix = Mixture(families, rates, seed=0, samples_per_epoch=100_000, prepare=collate.prepare)
        n_batches = max(4, args.draws // args.batch_size)
        print(f"{'mixture, collated (tiny model)':<34}{'samples/s':>10}")
        r0 = mixture_rate(mix, collate, args.batch_size, 0, n_batches)
        print(f"  {'0 workers':<32}{r0:>10.1f}")
        r2 = mixture_rate(mix, collate, args.batch_size, 2, n_batches)
        print(f"  {'2 workers':<32}{r2:>10.1f}")

        # Real-size preprocessing for context: Qwen2.5-VL's 448x448 budget and SAM at 1024.
        real_vlm = VlmProcessor.from_pretrained(vlm_dir)
        real_vlm.add_seg_token()
        real_vlm.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": 448 * 448}
        real_vlm.image_processor.patch_size = 14
        real_sam = build_image_processor(SamConfig())
        real = Collator(real_vlm, real_sam)
        mix_real = Mixture(families, rates, seed=0, samples_per_epoch=100_000, prepare=real.prepare)
        rr = mixture_rate(mix_real, real, args.batch_size, 2, max(2, n_batches // 4))
        print(f"  {'2 workers, real-size inputs':<32}{rr:>10.1f}")

        # One training step of the tiny model on such batches.
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        batches = [collate([mix[k] for k in range(b * args.batch_size, (b + 1) * args.batch_size)]) for b in range(6)]
        model.train()
        times = []
        for batch in batches:
            t = time.perf_counter()
            out = model(batch)
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - t)
        step = float(np.median(times[1:]))
        need = args.batch_size / step
        print(f"tiny-model training step (batch {args.batch_size}): {step * 1000:.0f} ms -> consumes {need:.1f} samples/s")
        print(f"data/step ratio (2 workers): {r2 / need:.2f}x what one step consumes")
    print(f"data_samples_per_s={r2:.1f}")


if __name__ == "__main__":
    main()
