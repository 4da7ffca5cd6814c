"""Promptable pre-training of a SAM trained from scratch: SAM's own task (a point or a box in,
the object's mask out) on the synthetic scenes, before the ``[SEG]`` model is trained.

Real [SEG] models start from Meta's SAM, which already turns a prompt into an object mask; the
[SEG] stage then only has to teach the VLM to say *which* object. A SAM trained from scratch
inside the [SEG] model has to learn both at once from one projected vector, and the tiny model
stalled there (Dice ~0.5). Pre-training it here first, on every visible shape of every scene
(not only the requests' targets), is the same division of labour at toy scale and costs minutes.

``multimask`` adds what SAM's automatic mask generator relies on and the single-mask stage never
trains: the three multimask outputs (Meta's recipe: only the output with the lowest loss is
trained on each prompt, so they specialise) and the IoU head (MSE against each output's real IoU
with the shape, all four outputs). Points on the plain background are prompted too, with every
output's IoU target 0: a synthetic scene's background is not an object, and a SAM that rates its
background masks low keeps them out of the proposals at Meta's 0.88 threshold.
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
    multimask: bool = False  # also train the three multimask outputs and the IoU head (see the module doc)
    point_share: float = 0.5  # prompts that are one point (the rest: a box, or a box and a point)
    background_share: float = 0.0  # with multimask: extra prompts on the background, IoU target 0
    iou_weight: float = 1.0
    freeze_image_encoder: bool = False


def _prompt(mask: np.ndarray, rng: random.Random, point_share: float = 0.5) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A positive point inside the visible region, a tight box, or both (original pixels)."""
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
    k = rng.randrange(len(xs))
    point = np.array([[xs[k], ys[k]]], np.float32)  # pixel index: the prompt encoder adds the 0.5
    r = rng.random()
    rest = (1 - point_share) / 2
    return (point, None) if r < point_share else (None, box) if r < point_share + rest else (point, box)


def _background_point(masks: list[np.ndarray], shape: tuple[int, int], rng: random.Random) -> np.ndarray | None:
    covered = np.zeros(shape, bool)
    for m in masks:
        covered |= m
    ys, xs = np.nonzero(~covered)
    if not len(xs):
        return None
    k = rng.randrange(len(xs))
    return np.array([[xs[k], ys[k]]], np.float32)



def _example(path: Path, config):
    from vlmsam.data.reason_seg import read_annotation
    from vlmsam.data.synth import visible_masks

    anno = read_annotation(path)
    image = Image.open(path.with_suffix(".jpg")).convert("RGB")
    masks = visible_masks(anno["scene"], image.height, image.width)
    masks = [m for m in masks if m.sum() >= config.min_pixels]
    return image, masks

def _forward(backend, model, config, batch):
    """The batch's losses (BCE, Dice, IoU head) and the IoUs reached, through SAM's parts."""
    import torch

    from vlmsam.metrics.iou import mask_iou
    from vlmsam.sam.backend import ImageEmbedding
    from vlmsam.seg_token.losses import dice_loss, sigmoid_bce_loss

    pixels, geometry = [], []
    for image, _ in batch:
        px, original, resized = backend.preprocess(image)
        pixels.append(px)
        geometry.append((original, resized))
    with torch.set_grad_enabled(torch.is_grad_enabled() and not config.freeze_image_encoder):
        emb = model.vision_encoder(torch.cat(pixels)).last_hidden_state
    bce = dice = iou_loss = emb.new_zeros(())
    ious, best = [], []
    for b, (image, prompts) in enumerate(batch):
        e = ImageEmbedding(emb[b : b + 1], *geometry[b])
        for mask, point, box in prompts:
            sparse, _ = backend.encode_prompts(e, boxes=None if box is None else box[None],
                                               points=None if point is None else point[None])
            if mask is None:  # a background point: nothing to segment, every output rated 0
                for multi in (False, True):
                    _, predicted = backend.decode(e, sparse_embeddings=sparse, multimask_output=multi)
                    iou_loss = iou_loss + (predicted[0] ** 2).mean()
                continue
            low, predicted = backend.decode(e, sparse_embeddings=sparse)
            logits = backend.upscale_logits(low, e)[:, 0]
            target = torch.from_numpy(mask[None].astype(np.uint8))
            bce = bce + sigmoid_bce_loss(logits, target)
            dice = dice + dice_loss(logits, target)
            real = mask_iou(logits.detach() > 0, target[0])
            ious.append(float(real[0]))
            if config.multimask:
                iou_loss = iou_loss + ((predicted[0] - real) ** 2).mean()
                low, predicted = backend.decode(e, sparse_embeddings=sparse, multimask_output=True)
                logits = backend.upscale_logits(low, e)[0]  # (3, H, W)
                targets = target.expand(len(logits), -1, -1)
                parts = [(sigmoid_bce_loss(logits[k : k + 1], targets[k : k + 1]), dice_loss(logits[k : k + 1], targets[k : k + 1]))
                         for k in range(len(logits))]
                # only the best output learns this prompt (SAM's ambiguity-aware loss)
                k = min(range(len(parts)), key=lambda j: float(2.0 * parts[j][0] + parts[j][1]))
                bce, dice = bce + parts[k][0], dice + parts[k][1]
                real = mask_iou(logits.detach() > 0, target[0])
                iou_loss = iou_loss + ((predicted[0] - real) ** 2).mean()
                best.append(float(real[predicted[0].argmax()]))
    n = max(len(ious), 1)
    return bce / n, dice / n, config.iou_weight * iou_loss / n, ious, best

def _draw(files, n, rng, config):
    out = []
    while len(out) < n:
        image, masks = _example(rng.choice(files), config)
        if masks:
            chosen = rng.sample(masks, min(config.prompts_per_image, len(masks)))
            prompts = [(mask, *_prompt(mask, rng, config.point_share)) for mask in chosen]
            if config.multimask and rng.random() < config.background_share:
                point = _background_point(masks, masks[0].shape, rng)
                if point is not None:
                    prompts.append((None, point, None))
            out.append((image, prompts))
    return out


def pretrain_sam(sam_dir: str | Path, data_dir: str | Path, out_dir: str | Path, config: PretrainConfig | None = None,
                 *, progress: bool = True) -> dict:
    """Train every part of the SAM in ``sam_dir`` on point/box prompts; save it to ``out_dir``.
    Returns the last logged losses and a held-out IoU on the val split."""
    import torch
    from tqdm import tqdm

    from vlmsam.data.synth import scene_files
    from vlmsam.sam import SamBackend
    from vlmsam.train.schedules import warmup_cosine

    config = config or PretrainConfig()
    data_dir = Path(data_dir)
    train_files, val_files = scene_files(data_dir, "train"), scene_files(data_dir, "val")
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    backend = SamBackend.from_pretrained(str(sam_dir))
    model = backend.model.train()
    if config.freeze_image_encoder:
        model.vision_encoder.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.warmup_steps, config.steps))

    log, first_iou_loss = {}, None
    bar = tqdm(range(config.steps), desc="SAM pre-training", unit="step", disable=not progress)
    for step in bar:
        bce, dice, iou_loss, ious, best = _forward(backend, model, config, _draw(train_files, config.batch_size, rng, config))
        loss = 2.0 * bce + dice + iou_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 20 == 0 or step == config.steps - 1:
            log = {"step": step + 1, "bce": float(bce), "dice": float(dice), "train_iou": float(np.mean(ious))}
            if config.multimask:
                log.update(iou_loss=float(iou_loss), train_best_iou=float(np.mean(best)))
                first_iou_loss = log["iou_loss"] if step == 0 else first_iou_loss
            bar.set_postfix(dice=f"{log['dice']:.3f}", iou=f"{log['train_iou']:.3f}",
                            **({"best": f"{log['train_best_iou']:.3f}"} if config.multimask else {}))
    model.eval()
    rng = random.Random(config.seed + 1)
    with torch.no_grad():
        runs = [_forward(backend, model, config, _draw(val_files, 16, rng, config)) for _ in range(8)]
    log["val_iou"] = float(np.mean([iou for run in runs for iou in run[3]]))
    if config.multimask:  # the output SAM's own IoU head ranks first, as the mask generator uses it
        log["first_iou_loss"] = first_iou_loss
        log["val_multimask_best_iou"] = float(np.mean([iou for run in runs for iou in run[4]]))
    out = Path(out_dir)
    model.save_pretrained(out)
    backend.processor.save_pretrained(out)
    (out / "pretrain.json").write_text(json.dumps({**config.__dict__, "data": str(data_dir), **log}, indent=2))
    return log
