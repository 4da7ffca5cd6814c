"""SAM 3's training losses for phrase samples: one-to-one matching of the detector's queries to a
phrase's instances (Hungarian, on class + box L1 + GIoU costs), then focal classification, box L1 and
GIoU, mask focal + Dice on the matched queries, and the presence head's BCE.

Weights are Meta's (``sam3/train``: matching costs class 2, L1 5, GIoU 2; losses L1 5, GIoU 2,
classification 20, presence 20; masks focal 200 and Dice 10; focal alpha 0.25, gamma 2). A phrase that
names nothing trains the presence head only; its classification loss is zero, as in Meta's recipe.
Only the last decoder layer is supervised here (Meta also supervises every intermediate layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Sam3LossWeights:
    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    loss_class: float = 20.0
    loss_bbox: float = 5.0
    loss_giou: float = 2.0
    loss_mask: float = 200.0
    loss_dice: float = 10.0
    loss_presence: float = 20.0
    alpha: float = 0.25
    gamma: float = 2.0


def box_area(b: torch.Tensor) -> torch.Tensor:
    return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)


def generalized_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU of XYXY boxes ``a (N, 4)`` and ``b (M, 4)`` -> ``(N, M)``."""
    lt, rb = torch.max(a[:, None, :2], b[None, :, :2]), torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a)[:, None] + box_area(b)[None] - inter
    iou = inter / union.clamp(min=1e-7)
    hull = (torch.max(a[:, None, 2:], b[None, :, 2:]) - torch.min(a[:, None, :2], b[None, :, :2])).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-7)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """XYXY boxes normalised to [0, 1] of ``(N, H, W)`` bool masks (pixel edges, so a 1-pixel mask has area)."""
    n, h, w = masks.shape
    out = torch.zeros((n, 4), dtype=torch.float32)
    for i, m in enumerate(masks):
        ys, xs = torch.nonzero(m, as_tuple=True)
        if len(xs):
            out[i] = torch.tensor([xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h])
    return out


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Sigmoid focal loss per element (RetinaNet's)."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    return ce * ((1 - p_t) ** gamma) * (alpha * targets + (1 - alpha) * (1 - targets))


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    p = logits.sigmoid().flatten(1)
    t = targets.flatten(1)
    return 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)


@torch.no_grad()
def match(logits: torch.Tensor, boxes: torch.Tensor, target_boxes: torch.Tensor, w: Sam3LossWeights):
    """Query index for each target instance (Hungarian), as ``(query_idx, target_idx)`` tensors."""
    from scipy.optimize import linear_sum_assignment

    p = logits.float().sigmoid()
    pos = w.alpha * (1 - p) ** w.gamma * -(p + 1e-8).log()
    neg = (1 - w.alpha) * p ** w.gamma * -(1 - p + 1e-8).log()
    cost = (w.cost_class * (pos - neg)[:, None] + w.cost_bbox * torch.cdist(boxes.float(), target_boxes, p=1)
            - w.cost_giou * generalized_iou(boxes.float(), target_boxes))
    q, t = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(q, dtype=torch.long), torch.as_tensor(t, dtype=torch.long)


def sam3_losses(out, targets: list[dict], w: Sam3LossWeights = Sam3LossWeights()) -> dict[str, torch.Tensor]:
    """Named losses (``loss`` is their weighted sum) of a Sam3Model output for a batch of phrases.
    ``targets[b]``: ``boxes (n, 4)`` XYXY in [0, 1] and ``masks (n, m, m)`` float at the mask head's size."""
    device = out.pred_logits.device
    terms = {k: torch.zeros((), device=device) for k in ("class", "bbox", "giou", "mask", "dice", "presence")}
    n_total = max(1, sum(len(t["boxes"]) for t in targets))
    for b, target in enumerate(targets):
        has = len(target["boxes"]) > 0
        terms["presence"] = terms["presence"] + F.binary_cross_entropy_with_logits(
            out.presence_logits[b].float().reshape(()), torch.tensor(float(has), device=device))
        if not has:
            continue  # Meta: a phrase naming nothing teaches the presence head only
        tb, tm = target["boxes"].to(device), target["masks"].to(device)
        q, t = match(out.pred_logits[b], out.pred_boxes[b], tb, w)
        labels = torch.zeros_like(out.pred_logits[b], dtype=torch.float32)
        labels[q] = 1.0
        terms["class"] = terms["class"] + focal_loss(out.pred_logits[b].float(), labels, w.alpha, w.gamma).sum()
        pb = out.pred_boxes[b, q].float()
        terms["bbox"] = terms["bbox"] + F.l1_loss(pb, tb[t], reduction="none").sum()
        terms["giou"] = terms["giou"] + (1 - torch.diag(generalized_iou(pb, tb[t]))).sum()
        pm = out.pred_masks[b, q].float()
        terms["mask"] = terms["mask"] + focal_loss(pm, tm[t], w.alpha, w.gamma).flatten(1).mean(1).sum()
        terms["dice"] = terms["dice"] + dice_loss(pm, tm[t]).sum()
    scale = {"class": w.loss_class, "bbox": w.loss_bbox, "giou": w.loss_giou, "mask": w.loss_mask, "dice": w.loss_dice}
    named = {k: terms[k] / n_total for k in scale}
    named["presence"] = terms["presence"] / len(targets)
    total = sum(scale[k] * named[k] for k in scale) + w.loss_presence * named["presence"]
    return {"loss": total, **{f"{k}_loss": v.detach() for k, v in named.items()}}
