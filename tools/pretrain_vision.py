"""Dense pre-training of a VLM vision tower trained from scratch: every visual token learns to say
the colour and the kind of shape it shows, before the ``[SEG]`` model is trained.

Real VLMs start from a vision encoder pre-trained on images (CLIP, SigLIP) whose tokens already
say what they show. A tower trained from scratch inside the [SEG] model learns to read only
through the language model, from one answer per image, and the tiny model stalled there: it found
shapes by position but called most of them "green triangles". Here each visual token (one 2x2
merged cell, what the language model sees) is trained directly: a linear head on the merger output
predicts the share of each colour and each shape kind in its cell (background included), from
the scenes' exact visible regions, and the cell's own position. Qwen-VL towers have only rotary
(relative) positions, so without the last target no token, and so no [SEG] state, knows where in
the image it is; SAM needs exactly that. The tower and merger are saved in the VLM directory, ready
for `vlmsam train` (which keeps them frozen for vlmsam-tiny, as LISA keeps CLIP frozen); the
probe head is saved beside it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image


@dataclass
class VisionPretrainConfig:
    steps: int = 3000
    batch_size: int = 32  # images per step
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    seed: int = 0
    position_weight: float = 10.0  # MSE on each token's own (x, y), in image fractions
    # Shape kind is learnt far more slowly than colour (a token must look at its neighbours): with
    # weight 3 and 5,000 steps it reaches 0.87 per shape (0.61 with 1 and 3,000 steps), as
    # `make tiny-model` runs it for vlmsam-tiny.
    kind_weight: float = 1.0


class _Example(NamedTuple):
    pixel_values: Any
    grid: Any
    colour: Any  # (cells, colours + 1) shares
    kind: Any  # (cells, kinds + 1) shares
    shares: Any  # (shapes, cells) coverage of each shape
    kinds: list[int]  # each shape's kind index
    centre: Any  # (cells, 2) each cell's centre, in image fractions
    scale: Any  # (cells, 2) cells per image fraction, to report errors in cells


def shape_shares(scene: list[dict], size: tuple[int, int], resized: tuple[int, int], cell: int) -> np.ndarray:
    """``(len(scene), cells)``: the share of each merged cell (row-major, as the merger emits
    them) that shows each shape of the scene. ``size`` is the original ``(H, W)``, ``resized``
    the model's input ``(H, W)``, a multiple of ``cell``."""
    from vlmsam.data.synth import visible_masks

    h, w = size
    owner = np.zeros((h, w), np.uint8)  # 0 = background, k + 1 = scene[k]
    for k, mask in enumerate(visible_masks(scene, h, w)):
        owner[mask] = k + 1
    rh, rw = resized
    owner = np.asarray(Image.fromarray(owner).resize((rw, rh), Image.NEAREST))
    onehot = np.eye(len(scene) + 1, dtype=np.float32)[owner][..., 1:]  # (rh, rw, shapes)
    cells = onehot.reshape(rh // cell, cell, rw // cell, cell, len(scene)).mean(axis=(1, 3))
    return cells.reshape(-1, len(scene)).T


def cell_targets(scene: list[dict], shares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per merged cell, the share of its pixels that show each colour and each shape kind;
    index 0 is the background. ``shares`` is :func:`shape_shares` of the same scene."""
    from vlmsam.data.synth import COLORS, SHAPES

    colour_of = np.eye(len(COLORS) + 1, dtype=np.float32)[[1 + list(COLORS).index(s["color"]) for s in scene]]
    kind_of = np.eye(len(SHAPES) + 1, dtype=np.float32)[[1 + SHAPES.index(s["shape"]) for s in scene]]
    colour, kind = shares.T @ colour_of, shares.T @ kind_of
    background = 1.0 - shares.sum(0)
    colour[:, 0] += background
    kind[:, 0] += background
    return colour, kind


def probe_losses(logits: list, colour: list, kind: list, centre, shares: list, kinds: list[list[int]]):
    """The dense probe's losses and accuracy counts over a batch. ``logits``: per image ``(cells, colours
    + 1 + kinds + 1 + 2)`` (colour shares, kind shares, the cell's x and y); ``colour``/``kind``: per image
    the :func:`cell_targets`; ``centre``: ``(all cells, 2)``; ``shares``: per image :func:`shape_shares`;
    ``kinds``: per image each shape's kind index. Accuracy where the language model (or a selection head)
    needs it: per shape, its cells' kind votes weighted by how much of each cell it covers; per cell, the
    colour of cells mostly covered by shapes."""
    import torch

    from vlmsam.data.synth import COLORS, SHAPES

    n_colour, n_kind = len(COLORS) + 1, len(SHAPES) + 1
    flat, colour, kind = torch.cat(logits), torch.cat(colour), torch.cat(kind)
    ce_colour = -(colour * flat[:, :n_colour].log_softmax(-1)).sum(-1).mean()
    ce_kind = -(kind * flat[:, n_colour : n_colour + n_kind].log_softmax(-1)).sum(-1).mean()
    mse_position = ((flat[:, -2:] - centre) ** 2).mean()
    shape_cells = colour[:, 0] < 0.5
    counts = {"colour_right": int((flat[shape_cells, :n_colour].argmax(-1) == colour[shape_cells].argmax(-1)).sum()),
              "colour_cells": int(shape_cells.sum()), "kind_right": 0, "shapes": 0}
    for lg, share, kind_of in zip(logits, shares, kinds):
        votes = share @ lg[:, n_colour + 1 : n_colour + n_kind].softmax(-1)  # (shapes, kinds)
        seen = share.sum(-1) > 0
        counts["kind_right"] += int((votes.argmax(-1) == torch.tensor(kind_of, dtype=torch.long))[seen].sum())
        counts["shapes"] += int(seen.sum())
    return ce_colour, ce_kind, mse_position, counts


def rate(counts: list[dict], right: str, total: str) -> float:
    """A pooled accuracy over logged batches: the sum of ``right`` over the sum of ``total``."""
    return sum(c[right] for c in counts) / max(sum(c[total] for c in counts), 1)


def _example(path: Path, processor, cell: int, merge: int):
    import torch

    from vlmsam.data.reason_seg import read_annotation
    from vlmsam.data.synth import SHAPES


    anno = read_annotation(path)
    image = Image.open(path.with_suffix(".jpg")).convert("RGB")
    pixel_values, grid, _ = processor.image_inputs(image)
    resized = (int(grid[0, 1]) * cell // merge, int(grid[0, 2]) * cell // merge)
    shares = shape_shares(anno["scene"], (image.height, image.width), resized, cell)
    colour, kind = cell_targets(anno["scene"], shares)
    kinds = [SHAPES.index(s["shape"]) for s in anno["scene"]]
    rows, cols = int(grid[0, 1]) // merge, int(grid[0, 2]) // merge
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    centre = torch.stack([(c.flatten() + 0.5) / cols, (r.flatten() + 0.5) / rows], -1)
    scale = torch.tensor([cols, rows], dtype=torch.float32).expand_as(centre)
    return _Example(pixel_values, grid, torch.from_numpy(colour), torch.from_numpy(kind), torch.from_numpy(shares), kinds,
                    centre, scale)

def _forward(vlm, head, processor, cell: int, merge: int, files):
    """The probe's losses and counts over ``files``, and the visual tokens."""
    import torch


    batch = [_example(p, processor, cell, merge) for p in files]
    pixels, grid = torch.cat([b.pixel_values for b in batch]), torch.cat([b.grid for b in batch])
    tokens = vlm.model.get_image_features(pixels, grid, return_dict=True).pooler_output
    logits = [head(t) for t in tokens]
    # Qwen-VL towers have only rotary positions, so no token knows where it is; the [SEG]
    # state can only tell SAM where its target is if the target's tokens do.
    centre, scale = torch.cat([b.centre for b in batch]), torch.cat([b.scale for b in batch])
    ce_colour, ce_kind, mse_position, counts = probe_losses(logits, [b.colour for b in batch], [b.kind for b in batch],
                                                            centre, [b.shares for b in batch], [b.kinds for b in batch])
    position = torch.cat(logits)[:, -2:].detach()
    counts.update(cells=len(position), position_error=float(((position - centre).abs() * scale).sum(-1).sum()))
    return ce_colour, ce_kind, mse_position, counts, torch.cat(list(tokens))


def pretrain_vision(vlm_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
                    config: VisionPretrainConfig | None = None, *, progress: bool = True) -> dict:
    """Train the vision tower (and merger) of the Qwen-VL in ``vlm_dir`` to name the colour and
    shape kind under each visual token, and its position; save the whole VLM to ``out_dir``.
    Returns the last logged losses and held-out scores: colour accuracy per cell mostly showing a
    shape, kind accuracy per shape (its cells' votes weighted by coverage), position error in cells."""
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm
    from transformers import AutoModelForImageTextToText

    from vlmsam.data.synth import COLORS, SHAPES, scene_files
    from vlmsam.train.schedules import warmup_cosine
    from vlmsam.vlm.processor import VlmProcessor

    config = config or VisionPretrainConfig()
    data_dir = Path(data_dir)
    train_files, val_files = scene_files(data_dir, "train"), scene_files(data_dir, "val")
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    vlm = AutoModelForImageTextToText.from_pretrained(str(vlm_dir))
    processor = VlmProcessor.from_pretrained(vlm_dir)
    visual = vlm.model.visual.train()
    merge = processor.image_processor.merge_size
    cell = processor.image_processor.patch_size * merge
    n_colour, n_kind = len(COLORS) + 1, len(SHAPES) + 1
    head = torch.nn.Linear(vlm.config.text_config.hidden_size, n_colour + n_kind + 2)
    params = [*visual.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.warmup_steps, config.steps))

    log, history, recent = {}, [], []
    bar = tqdm(range(config.steps), desc="vision pre-training", unit="step", disable=not progress)
    for step in bar:
        ce_colour, ce_kind, mse_position, counts, _ = _forward(vlm, head, processor, cell, merge, rng.sample(train_files, config.batch_size))
        loss = ce_colour + config.kind_weight * ce_kind + config.position_weight * mse_position
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        recent.append(counts)
        if (step + 1) % 100 == 0 or step == config.steps - 1:
            log = {"step": step + 1, "ce_colour": ce_colour.item(), "ce_kind": ce_kind.item(), "mse_position": mse_position.item(),
                   "train_position_error": rate(recent, "position_error", "cells"),
                   "train_colour_acc": rate(recent, "colour_right", "colour_cells"),
                   "train_kind_acc": rate(recent, "kind_right", "shapes")}
            history.append(log)
            recent = []
            bar.set_postfix(colour=f"{log['train_colour_acc']:.2f}", kind=f"{log['train_kind_acc']:.2f}",
                            where=f"{log['train_position_error']:.2f}")
    visual.eval()
    rng = random.Random(config.seed + 1)
    with torch.no_grad():
        val = [_forward(vlm, head, processor, cell, merge, rng.sample(val_files, min(32, len(val_files)))) for _ in range(4)]
    log["val_colour_acc"] = rate([v[3] for v in val], "colour_right", "colour_cells")
    log["val_kind_acc"] = rate([v[3] for v in val], "kind_right", "shapes")
    # |dx| + |dy| between each token's predicted and true cell, in cells.
    log["val_position_error"] = rate([v[3] for v in val], "position_error", "cells")
    # What the language model will see: the visual tokens' norm (text embeddings are ~0.3 at init).
    log["visual_token_norm"] = float(torch.cat([v[4] for v in val]).norm(dim=-1).mean())
    out = Path(out_dir)
    vlm.save_pretrained(out)
    processor.save_pretrained(out)
    # The probe head is not part of the VLM; kept beside it for diagnostics (`torch.load`-free).
    save_file(head.state_dict(), out / "pretrain_head.safetensors")
    (out / "pretrain.json").write_text(json.dumps({**config.__dict__, "data": str(data_dir), **log, "history": history}, indent=2))
    return log
