"""LLM-Seg's selection head: which of SAM's proposals does a ``[SEG]`` embedding mean?

As LLM-Seg defines it: frozen DINOv2 patch features -> a 1x1 convolution to 256 channels ->
averaged inside each proposal (the largest 50); two two-way attention blocks between the proposal
embeddings and the projected ``[SEG]`` embedding; an IoU head (sigmoid) and an embedding head.
Losses: alignment (KL between softmax(GT IoU / 0.05) and softmax(cosine / 0.05)) and IoU
regression (MSE weighted by exp(GT - 1), x 50); the language CE comes from the VLM. Inference: the
union of the proposals whose predicted IoU is above 0.5, or the single best.

``geometry`` (off by default, as in LLM-Seg) adds each proposal's box and size, embedded linearly,
to its pooled features. Averaging features inside a mask keeps what a proposal shows and roughly
where, but not how large it is, which "the largest triangle" needs; SAM already knows the mask, so
the head is told instead of having to infer it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlmsam.sam.amg import masks_to_boxes

TEMPERATURE = 0.05
IOU_LOSS_WEIGHT = 50.0


class TwoWayBlock(nn.Module):
    """Query tokens attend to the proposals and the proposals to the queries (SAM's two-way pattern)."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.to_proposals = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.to_queries = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))

    def forward(self, queries: torch.Tensor, proposals: torch.Tensor, mask: torch.Tensor | None = None):
        """``queries (B, Q, D)``, ``proposals (B, K, D)``, ``mask (B, K)`` True where a proposal is padding."""
        queries = self.norms[0](queries + self.self_attn(queries, queries, queries)[0])
        queries = self.norms[1](queries + self.to_proposals(queries, proposals, proposals, key_padding_mask=mask)[0])
        queries = self.norms[2](queries + self.mlp(queries))
        proposals = self.norms[3](proposals + self.to_queries(proposals, queries, queries)[0])
        return queries, proposals


class SelectionHead(nn.Module):
    def __init__(self, feature_dim: int, seg_dim: int, dim: int = 256, depth: int = 2, heads: int = 8,
                 geometry: bool = False):
        super().__init__()
        self.feature_proj = nn.Conv2d(feature_dim, dim, kernel_size=1)
        self.geometry_proj = nn.Linear(5, dim) if geometry else None
        self.seg_proj = nn.Sequential(nn.Linear(seg_dim, seg_dim), nn.ReLU(inplace=True), nn.Linear(seg_dim, dim))
        self.blocks = nn.ModuleList(TwoWayBlock(dim, heads, 2 * dim) for _ in range(depth))
        self.iou_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, 1))
        self.embed_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))

    def pool(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``features (C, h, w)`` and ``masks (K, H, W)`` -> ``(K, dim)``: projected features averaged in each mask."""
        projected = self.feature_proj(features[None])[0]  # (dim, h, w)
        weights = F.adaptive_avg_pool2d(masks.float()[:, None], projected.shape[-2:])[:, 0]  # share of each cell
        pooled = torch.einsum("khw,dhw->kd", weights, projected) / weights.flatten(1).sum(1, keepdim=True).clamp_min(1e-6)
        if self.geometry_proj is not None:
            pooled = pooled + self.geometry_proj(geometry(masks).to(pooled.dtype))
        return pooled

    def forward(self, features: torch.Tensor, masks: torch.Tensor, seg_embedding: torch.Tensor):
        """Predicted IoU ``(K,)`` of each proposal with what ``seg_embedding`` means, the proposals'
        embeddings ``(K, dim)`` and the query's ``(dim,)`` (for the alignment loss)."""
        proposals = self.pool(features, masks)[None]
        queries = self.seg_proj(seg_embedding)[None, None]
        for block in self.blocks:
            queries, proposals = block(queries, proposals)
        iou = torch.sigmoid(self.iou_head(proposals)[0, :, 0])
        return iou, self.embed_head(proposals[0]), queries[0, 0]


def geometry(masks: torch.Tensor) -> torch.Tensor:
    """``(K, 5)``: each mask's box ``x1, y1, x2, y2`` in image fractions (``x2``, ``y2`` exclusive) and the
    square root of its area share."""
    h, w = masks.shape[-2:]
    box = masks_to_boxes(masks).float() + torch.tensor([0.0, 0.0, 1.0, 1.0], device=masks.device)
    box = box / torch.tensor([w, h, w, h], dtype=torch.float32, device=masks.device)
    return torch.cat([box, masks.flatten(1).float().mean(1, keepdim=True).sqrt()], -1)


def selection_losses(iou: torch.Tensor, proposal_emb: torch.Tensor, query_emb: torch.Tensor, gt_iou: torch.Tensor) -> dict:
    """LLM-Seg's losses for one ``[SEG]``: alignment (KL) and weighted IoU regression (x 50)."""
    cosine = F.cosine_similarity(proposal_emb, query_emb[None], dim=-1)
    target = F.softmax(gt_iou / TEMPERATURE, dim=0)
    alignment = F.kl_div(F.log_softmax(cosine / TEMPERATURE, dim=0), target, reduction="sum")
    regression = IOU_LOSS_WEIGHT * (torch.exp(gt_iou - 1) * (iou - gt_iou) ** 2).mean()
    return {"loss": alignment + regression, "alignment_loss": alignment.detach(), "iou_loss": regression.detach()}


def select(iou: torch.Tensor, threshold: float = 0.5, single: bool = False) -> torch.Tensor:
    """Indices of the chosen proposals: those above ``threshold`` (the best one if none is), or the best."""
    if single or not bool((iou > threshold).any()):
        return iou.argmax()[None]
    return torch.nonzero(iou > threshold)[:, 0]
