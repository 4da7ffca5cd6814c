"""Promptable pre-training of a SAM trained from scratch: SAM's own task (a point or a box in,
the object's mask out) on the synthetic scenes, before the ``[SEG]`` model is trained.

Real [SEG] models start from Meta's SAM, which already turns a prompt into an object mask; the
[SEG] stage then only has to teach the VLM to say *which* object. A SAM trained from scratch
inside the [SEG] model has to learn both at once from one projected vector, and the tiny model
stalled there (Dice ~0.5). Pre-training it here first, on every visible shape of every scene
(not only the requests' targets), is the same division of labour at toy scale and costs minutes.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image



@dataclass
class PretrainConfig:
    steps: int = 3000
    batch_size: int = 16  # images per step
    prompts_per_image: int = 3  # distinct shapes of one image share its encoding
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    seed: int = 0
    min_pixels: int = 12  # shapes mostly hidden by others are not prompted


def _prompt(mask: np.ndarray, rng: random.Random) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A positive point inside the visible region, a tight box, or both (original pixels)."""
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
    k = rng.randrange(len(xs))
    point = np.array([[xs[k], ys[k]]], np.float32)  # pixel index: the prompt encoder adds the 0.5
    r = rng.random()
    return (point, None) if r < 0.5 else (None, box) if r < 0.75 else (point, box)


def pretrain_sam(sam_dir: str | Path, data_dir: str | Path, out_dir: str | Path, config: PretrainConfig | None = None,
                 *, progress: bool = True) -> dict:
    """Train every part of the SAM in ``sam_dir`` on point/box prompts; save it to ``out_dir``.
    Returns the last logged losses and a held-out IoU on the val split."""
    import torch
    from tqdm import tqdm

    from vlmsam.data.reason_seg import read_annotation
    from vlmsam.data.synth import scene_files, visible_masks
    from vlmsam.sam import SamBackend
    from vlmsam.sam.backend import ImageEmbedding
    from vlmsam.seg_token.losses import dice_loss, sigmoid_bce_loss
    from vlmsam.train.schedules import warmup_cosine

    config = config or PretrainConfig()
    data_dir = Path(data_dir)
    train_files, val_files = scene_files(data_dir, "train"), scene_files(data_dir, "val")
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    backend = SamBackend.from_pretrained(str(sam_dir))
    model = backend.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.warmup_steps, config.steps))

    def example(path: Path):
        anno = read_annotation(path)
        image = Image.open(path.with_suffix(".jpg")).convert("RGB")
        masks = visible_masks(anno["scene"], image.height, image.width)
        masks = [m for m in masks if m.sum() >= config.min_pixels]
        return image, masks

    def forward(batch):
        pixels, geometry = [], []
        for image, _ in batch:
            px, original, resized = backend.preprocess(image)
            pixels.append(px)
            geometry.append((original, resized))
        emb = model.vision_encoder(torch.cat(pixels)).last_hidden_state
        bce = dice = emb.new_zeros(())
        ious = []
        for b, (image, prompts) in enumerate(batch):
            e = ImageEmbedding(emb[b : b + 1], *geometry[b])
            for mask, point, box in prompts:
                sparse, _ = backend.encode_prompts(e, boxes=None if box is None else box[None],
                                                   points=None if point is None else point[None])
                low, _ = backend.decode(e, sparse_embeddings=sparse)
                logits = backend.upscale_logits(low, e)[:, 0]
                target = torch.from_numpy(mask[None].astype(np.uint8))
                bce = bce + sigmoid_bce_loss(logits, target)
                dice = dice + dice_loss(logits, target)
                pred = logits[0] > 0
                ious.append(float((pred & target[0].bool()).sum() / (pred | target[0].bool()).sum().clamp_min(1)))
        return bce / len(ious), dice / len(ious), ious

    def draw(files, n):
        out = []
        while len(out) < n:
            image, masks = example(rng.choice(files))
            if masks:
                chosen = rng.sample(masks, min(config.prompts_per_image, len(masks)))
                out.append((image, [(mask, *_prompt(mask, rng)) for mask in chosen]))
        return out

    log = {}
    bar = tqdm(range(config.steps), desc="SAM pre-training", unit="step", disable=not progress)
    for step in bar:
        bce, dice, ious = forward(draw(train_files, config.batch_size))
        loss = 2.0 * bce + dice
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 20 == 0 or step == config.steps - 1:
            log = {"step": step + 1, "bce": float(bce), "dice": float(dice), "train_iou": float(np.mean(ious))}
            bar.set_postfix(dice=f"{log['dice']:.3f}", iou=f"{log['train_iou']:.3f}")
    model.eval()
    rng = random.Random(config.seed + 1)
    with torch.no_grad():
        val = [iou for _ in range(8) for iou in forward(draw(val_files, 16))[2]]
    log["val_iou"] = float(np.mean(val))
    out = Path(out_dir)
    model.save_pretrained(out)
    backend.processor.save_pretrained(out)
    (out / "pretrain.json").write_text(json.dumps({**config.__dict__, "data": str(data_dir), **log}, indent=2))
    return log
