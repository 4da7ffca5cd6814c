"""Mask losses as LISA defines them, with ignore pixels (target 255) left out."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlmsam.data.sample import IGNORE as IGNORE_INDEX  # the one ignore label (255)
from vlmsam.seg_vlm.losses import answer_starts, answer_weighted_ce  # noqa: F401  (shared with box_prompt)


def _split(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    valid = (targets != IGNORE_INDEX).float()
    return (targets == 1).float(), valid


def sigmoid_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-mask mean BCE over valid pixels, summed over masks. ``logits``, ``targets``: ``(N, H, W)``."""
    target, valid = _split(targets)
    loss = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none") * valid
    return (loss.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1.0)).sum()


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, scale: float = 1000.0, eps: float = 1e-6) -> torch.Tensor:
    """LISA's dice (probabilities and targets scaled down by ``scale``), summed over masks."""
    target, valid = _split(targets)
    probs = logits.float().sigmoid() * valid
    numerator = 2 * (probs / scale * target).flatten(1).sum(1)
    denominator = (probs / scale).flatten(1).sum(1) + (target / scale).flatten(1).sum(1)
    return (1 - (numerator + eps) / (denominator + eps)).sum()
