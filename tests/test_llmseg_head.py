"""LLM-Seg's selection head learns to pick the target proposal on a small synthetic set.

Images hold four squares of distinct colours; DINOv2 (transformers' Dinov2Model, tiny, random and
frozen) gives the patch features; the proposals are the squares; the "[SEG] embedding" stands in for
the VLM's: the target's colour through a fixed random projection plus noise. Held-out accuracy of
the best-scored proposal must exceed 0.9.
"""

from __future__ import annotations

import numpy as np
import torch

from vlmsam.metrics.iou import mask_iou
from vlmsam.proposal_select.llmseg_head import SelectionHead, select, selection_losses

COLORS = np.array([(230, 30, 30), (30, 200, 30), (30, 30, 230), (230, 200, 30), (200, 30, 200), (30, 200, 200)], np.float32)


def scene(rng, dino, seg_map):
    img = (rng.random((64, 64, 3)) * 40).astype(np.float32)
    masks = np.zeros((4, 64, 64), bool)
    colors = rng.choice(len(COLORS), 4, replace=False)
    for k, (y, x) in enumerate([(4, 4), (4, 36), (36, 4), (36, 36)]):
        dy, dx = rng.integers(0, 8, 2)
        masks[k, y + dy:y + dy + 20, x + dx:x + dx + 20] = True
        img[masks[k]] = COLORS[colors[k]]
    pixels = torch.from_numpy((img / 255.0 - 0.45) / 0.25).permute(2, 0, 1)[None]
    with torch.no_grad():
        tokens = dino(pixel_values=pixels).last_hidden_state[0, 1:]  # patch tokens
    side = int(len(tokens) ** 0.5)
    features = tokens.T.reshape(-1, side, side)
    target = int(rng.integers(4))
    one_hot = torch.zeros(len(COLORS))
    one_hot[colors[target]] = 1
    seg = seg_map(one_hot) + 0.05 * torch.from_numpy(rng.standard_normal(32).astype(np.float32))
    return features, torch.from_numpy(masks), seg, target


def test_the_head_learns_to_pick_the_target():
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    dino = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    patch_size=8, image_size=64)).eval()
    seg_map = torch.nn.Linear(len(COLORS), 32).requires_grad_(False)
    rng = np.random.default_rng(0)
    train = [scene(rng, dino, seg_map) for _ in range(96)]
    held_out = [scene(rng, dino, seg_map) for _ in range(40)]
    torch.manual_seed(0)  # held-out accuracy 0.95-1.0 over initialisation seeds 0-4 (measured)
    head = SelectionHead(feature_dim=32, seg_dim=32, dim=64, depth=2, heads=4)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    for step in range(400):
        features, masks, seg, target = train[step % len(train)]
        iou, emb, query = head(features, masks, seg)
        losses = selection_losses(iou, emb, query, mask_iou(masks, masks[target]))
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    with torch.no_grad():
        correct = 0
        for features, masks, seg, target in held_out:
            iou, _, _ = head(features, masks, seg)
            correct += int(select(iou, single=True).item() == target)
    assert correct / len(held_out) > 0.9, correct / len(held_out)


def test_losses_and_selection_rules():
    gt = torch.tensor([1.0, 0.2, 0.0])
    iou = torch.tensor([0.9, 0.6, 0.1], requires_grad=True)
    emb = torch.randn(3, 8, requires_grad=True)
    losses = selection_losses(iou, emb, torch.randn(8), gt)
    losses["loss"].backward()
    assert losses["iou_loss"] > 0 and iou.grad is not None and emb.grad is not None
    assert select(torch.tensor([0.9, 0.6, 0.1])).tolist() == [0, 1]
    assert select(torch.tensor([0.2, 0.4, 0.1])).tolist() == [1]  # none above 0.5: the best one
    assert select(torch.tensor([0.9, 0.6, 0.1]), single=True).tolist() == [0]


def test_geometry_gives_each_mask_its_box_and_size():
    from vlmsam.proposal_select.llmseg_head import geometry

    masks = torch.zeros(2, 10, 20, dtype=torch.bool)
    masks[0, 2:5, 4:10] = True
    masks[1] = True
    got = geometry(masks)
    assert torch.allclose(got[0], torch.tensor([4 / 20, 2 / 10, 10 / 20, 5 / 10, (18 / 200) ** 0.5]))
    assert torch.allclose(got[1], torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]))
    head = SelectionHead(feature_dim=8, seg_dim=8, dim=16, depth=1, heads=2, geometry=True)
    features = torch.zeros(8, 4, 4)  # no feature tells the two masks apart; only their geometry does
    pooled = head.pool(features, masks)
    assert not torch.allclose(pooled[0], pooled[1])
    plain = SelectionHead(feature_dim=8, seg_dim=8, dim=16, depth=1, heads=2).pool(features, masks)
    assert torch.allclose(plain[0], plain[1])
