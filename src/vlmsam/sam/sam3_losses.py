"""SAM 3's training losses for phrase samples, as Meta's ``sam3/train`` defines them: one-to-one matching of
the detector's queries to a phrase's instances (Hungarian on focal class cost 2, box L1 5, GIoU 2), then
IoU-aware BCE classification (20; matched queries towards clamp(p^0.25 · IoU^0.75, 0.01) with weight 10,
the rest towards 0 damped by p^2, mean over every phrase's queries), box L1 on (cx, cy, w, h) (5) and GIoU (2),
and the presence logit's half-BCE (20), at every decoder layer; mask focal (200) and Dice (10) on the last
layer's matches. A phrase that names nothing trains the presence head only. ``one_to_many_losses`` is Meta's
DAC branch (``dac: True`` in its training configs): copies of the queries that skip self-attention, matched
one-to-many on the last layer (``BinaryOneToManyMatcher``: alpha 0.3, threshold 0.4, top 4; the earlier layers
Hungarian, as ``use_o2m_matcher_on_o2m_aux: false``), classes, boxes and (as Meta's ``o2m_mask_predict``) the
last layer's masks, weight 2.
Not here: its sqrt(batch) loss scale and its resize / crop augmentation; targets are resized to the mask
head's size rather than the predictions to the targets'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlmsam.sam.amg import box_iou
from vlmsam.sam.amg import masks_to_boxes as inclusive_boxes


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
    pos_weight: float = 10.0  # IABCE's weight of matched queries (Meta's Roboflow fine-tuning)
    iou_alpha: float = 0.25  # IABCE's soft target p^a · IoU^(1-a)
    o2m_weight: float = 2.0  # the DAC branch's losses, each times this
    o2m_alpha: float = 0.3  # its matcher: alpha · p + (1 - alpha) · box IoU ...
    o2m_threshold: float = 0.4  # ... above this ...
    o2m_topk: int = 4  # ... among a target's top k queries


def xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    return torch.cat([(b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2]], dim=-1)


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
    """XYXY boxes normalised to [0, 1] of ``(N, H, W)`` bool masks, on pixel edges (a 1-pixel mask has area):
    the automatic mask generator's boxes (inclusive max) with one added to the max, over (W, H, W, H)."""
    h, w = masks.shape[-2:]
    boxes = inclusive_boxes(masks).float()
    boxes[:, 2:] += masks.flatten(1).any(1, keepdim=True).float()
    return boxes / torch.tensor([w, h, w, h], dtype=torch.float32)


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
    cost = (w.cost_class * (pos - neg)[:, None]
            + w.cost_bbox * torch.cdist(xyxy_to_cxcywh(boxes.float()), xyxy_to_cxcywh(target_boxes), p=1)
            - w.cost_giou * generalized_iou(boxes.float(), target_boxes))
    q, t = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(q, dtype=torch.long), torch.as_tensor(t, dtype=torch.long)


@torch.no_grad()
def match_one_to_many(logits: torch.Tensor, boxes: torch.Tensor, target_boxes: torch.Tensor, w: Sam3LossWeights):
    """DAC-DETR's assignment as Meta's ``BinaryOneToManyMatcher``: for each target, the queries among its top k by
    alpha · p + (1 - alpha) · box IoU (above that score's (1 - k/Q) quantile) that also score above the threshold;
    a query may serve several targets. ``(query_idx, target_idx)``, ordered by query."""
    score = w.o2m_alpha * logits.float().sigmoid()[:, None] + (1 - w.o2m_alpha) * box_iou(boxes.float(), target_boxes)
    top = score > torch.quantile(score, 1 - w.o2m_topk / len(score), dim=0, keepdim=True)
    q, t = torch.nonzero(top & (score > w.o2m_threshold), as_tuple=True)
    return q, t


def iou_aware_bce(logits: torch.Tensor, q: torch.Tensor, ious: torch.Tensor, w: Sam3LossWeights) -> torch.Tensor:
    """Meta's IABCE for one phrase: matched queries learn the soft target clamp(p^0.25 · IoU^0.75, 0.01) (detached)
    with weight ``pos_weight``, the others BCE towards 0 damped by p^gamma; the mean over queries."""
    x = logits.float()
    p = x.sigmoid()
    loss = F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none") * p ** w.gamma
    if len(q):
        soft = (p[q].detach() ** w.iou_alpha * ious.detach().clamp(min=0) ** (1 - w.iou_alpha)).clamp(min=0.01)
        loss = loss.clone()
        loss[q] = F.binary_cross_entropy_with_logits(x[q], soft, reduction="none") * w.pos_weight
    return loss.mean()


def _box_terms(logits, boxes, target_boxes, w, matcher=match) -> tuple[torch.Tensor, ...]:
    """Matching, then (class, L1, 1 - GIoU) sums and the matched pairs, for one phrase at one decoder layer."""
    q, t = matcher(logits, boxes, target_boxes, w)
    pb, tb = boxes[q].float(), target_boxes[t]
    giou = torch.diag(generalized_iou(pb, tb))
    iou = torch.diag(box_iou(pb, tb))
    l1 = F.l1_loss(xyxy_to_cxcywh(pb), xyxy_to_cxcywh(tb), reduction="none").sum()  # Meta's L1 is on (cx, cy, w, h)
    return iou_aware_bce(logits, q, iou, w), l1, (1 - giou).sum(), q, t


def _mask_terms(pred: torch.Tensor, target: torch.Tensor, w: Sam3LossWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask focal and Dice sums over matched pairs (prediction logits, target masks at the mask head's size)."""
    pred = pred.float()
    return focal_loss(pred, target, w.alpha, w.gamma).flatten(1).mean(1).sum(), dice_loss(pred, target).sum()


def _scales(w: Sam3LossWeights) -> dict[str, float]:
    return {"class": w.loss_class, "bbox": w.loss_bbox, "giou": w.loss_giou, "mask": w.loss_mask, "dice": w.loss_dice}


def sam3_losses(out, targets: list[dict], w: Sam3LossWeights = Sam3LossWeights(), layers=None) -> dict[str, torch.Tensor]:
    """Named losses (``loss`` is their weighted sum) of a Sam3Model output for a batch of phrases.
    ``targets[b]``: ``boxes (n, 4)`` XYXY in [0, 1] and ``masks (n, m, m)`` float at the mask head's size.
    ``layers``: ``(logits (L, B, Q), boxes (L, B, Q, 4), presence (L, B, 1))`` of the earlier decoder layers,
    supervised too (classes, boxes, presence; masks on the last layer only), as Meta's aux losses."""
    device = out.pred_logits.device
    terms = {k: torch.zeros((), device=device) for k in ("class", "bbox", "giou", "mask", "dice", "presence")}
    n_total = max(1, sum(len(t["boxes"]) for t in targets))
    stack = [(out.pred_logits, out.pred_boxes, out.presence_logits)] + (list(zip(*layers)) if layers is not None else [])
    for b, target in enumerate(targets):
        has = torch.tensor(float(len(target["boxes"]) > 0), device=device)
        for _, _, presence in stack:  # Meta: sigmoid focal with alpha 0.5, gamma 0, i.e. half a BCE, every layer
            terms["presence"] = terms["presence"] + 0.5 * F.binary_cross_entropy_with_logits(presence[b].float().reshape(()), has)
        if not len(target["boxes"]):
            continue  # Meta: a phrase naming nothing teaches the presence head only
        tb, tm = target["boxes"].to(device), target["masks"].to(device)
        for k, (logits, boxes, _) in enumerate(stack):
            cls, l1, giou, q, t = _box_terms(logits[b], boxes[b], tb, w)
            terms["class"], terms["bbox"], terms["giou"] = terms["class"] + cls, terms["bbox"] + l1, terms["giou"] + giou
            if k == 0:  # the final layer's matches draw the masks
                focal, dice = _mask_terms(out.pred_masks[b, q], tm[t], w)
                terms["mask"], terms["dice"] = terms["mask"] + focal, terms["dice"] + dice
    scale = _scales(w)
    named = {k: terms[k] / n_total for k in ("bbox", "giou", "mask", "dice")}
    named["class"] = terms["class"] / len(targets)  # Meta: the mean over every phrase's queries, negatives' zeros included
    named["presence"] = terms["presence"] / len(targets)
    total = sum(scale[k] * named[k] for k in scale) + w.loss_presence * named["presence"]
    return {"loss": total, **{f"{k}_loss": v.detach() for k, v in named.items()}}


def one_to_many_losses(logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict], w: Sam3LossWeights = Sam3LossWeights(),
                       masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The DAC branch's named losses (``loss`` their weighted sum, o2m_weight included) from the self-attention-free
    query copies' ``logits (L, B, Q)``, XYXY ``boxes (L, B, Q, 4)`` (first layer first) and, if given, the last
    layer's ``masks (B, Q, m, m)``: the last layer matched one-to-many, the earlier ones one-to-one; normalised as
    ``sam3_losses`` (by instances; classes by phrases)."""
    terms = {k: torch.zeros((), device=logits.device) for k in ("class", "bbox", "giou", "mask", "dice")}
    for b, target in enumerate(targets):
        if not len(target["boxes"]):
            continue
        tb = target["boxes"].to(logits.device)
        for k in range(len(logits)):
            last = k == len(logits) - 1
            cls, l1, giou, q, t = _box_terms(logits[k, b], boxes[k, b], tb, w, match_one_to_many if last else match)
            terms["class"], terms["bbox"], terms["giou"] = terms["class"] + cls, terms["bbox"] + l1, terms["giou"] + giou
            if last and masks is not None:
                focal, dice = _mask_terms(masks[b, q], target["masks"].to(logits.device)[t], w)
                terms["mask"], terms["dice"] = terms["mask"] + focal, terms["dice"] + dice
    n_total = max(1, sum(len(t["boxes"]) for t in targets))
    named = {k: terms[k] / n_total for k in ("bbox", "giou", "mask", "dice")}
    named["class"] = terms["class"] / len(targets)
    keep = {k: v for k, v in _scales(w).items() if masks is not None or k not in ("mask", "dice")}
    total = w.o2m_weight * sum(keep[k] * named[k] for k in keep)
    return {"loss": total, **{f"{k}_loss_o2m": named[k].detach() for k in keep}}
