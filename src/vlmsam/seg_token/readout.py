"""The [SEG] read-out shared by training and generation: hidden states -> SAM prompts -> masks, and the
optional targets for those prompts in SAM's own terms (``SegTokenConfig.prompt_target``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlmsam.data.sample import IGNORE
from vlmsam.sam.backend import ImageEmbedding


class ReadoutMixin:

    def masks_from_states(self, states: torch.Tensor, embedding: ImageEmbedding):
        """``(N, hidden)`` [SEG] states -> ``(N, H, W)`` mask logits in original pixels and ``(N,)`` predicted IoU."""
        if states.shape[0] == 0:
            return states.new_zeros((0, *embedding.original_size)), states.new_zeros((0,))
        sparse = self.projection(states)[:, None, :]
        low, iou = self.sam_backend.decode(embedding, sparse_embeddings=sparse)
        return self.sam_backend.upscale_logits(low, embedding)[:, 0], iou[:, 0]

    def prompt_target_loss(self, states: torch.Tensor, targets: torch.Tensor, embedding: ImageEmbedding) -> torch.Tensor:
        """Summed MSE between the projected [SEG] states and their targets in SAM's terms (see
        ``SegTokenConfig.prompt_target``)."""
        in_sam = self.region_embeddings if self.config.prompt_target == "region" else self.point_embeddings
        with torch.no_grad():
            wanted = in_sam(targets, embedding)
        return F.mse_loss(self.projection(states).float(), wanted.float(), reduction="none").mean(-1).sum()

    def region_embeddings(self, targets: torch.Tensor, embedding: ImageEmbedding) -> torch.Tensor:
        """``(N, C)``: SAM's image embedding averaged over each target, weighted by how much of
        each grid cell the target covers in SAM's resized, padded input frame."""
        (h1, w1), grid = embedding.input_size, embedding.embeddings.shape[-1]
        size = self.sam.config.vision_config.image_size
        fg = (targets == 1).float()[:, None]
        fg = F.interpolate(fg, size=(h1, w1), mode="bilinear", align_corners=False)
        fg = F.pad(fg, (0, size - w1, 0, size - h1))
        weights = F.adaptive_avg_pool2d(fg, grid)[:, 0].to(embedding.embeddings.dtype)  # (N, g, g)
        feats = embedding.embeddings[0]  # (C, g, g)
        return torch.einsum("nhw,chw->nc", weights, feats) / weights.flatten(1).sum(1, keepdim=True).clamp_min(1e-6)

    def point_embeddings(self, targets: torch.Tensor, embedding: ImageEmbedding) -> torch.Tensor:
        """``(N, C)``: SAM's prompt embedding of a foreground point at each target's centre of
        mass (the target pixel nearest to it, so a concave target still gets a point on itself)."""
        points = []
        for mask in targets:
            ys, xs = torch.nonzero(mask == 1, as_tuple=True)
            if len(xs) == 0:
                ys, xs = torch.nonzero(mask != IGNORE, as_tuple=True)
            cy, cx = ys.float().mean(), xs.float().mean()
            k = torch.argmin((ys - cy) ** 2 + (xs - cx) ** 2)
            points.append(torch.stack([xs[k], ys[k]]).float())  # SAM adds the half-pixel shift itself
        coords = self.sam_backend.transform_coords(torch.stack(points), embedding).to(self.sam_backend.device, self.sam_backend.dtype)
        labels = torch.ones(len(points), 1, 1, dtype=torch.long, device=coords.device)
        return self.sam.prompt_encoder._embed_points(coords[:, None, None], labels, pad=False)[:, 0, 0]
