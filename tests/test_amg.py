"""The automatic mask generator: its pieces on deterministic inputs, and parity with Meta's
``SamAutomaticMaskGenerator`` on the same (random) weights and image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from vlmsam.sam import SamBackend
from vlmsam.sam.amg import (AutomaticMaskGenerator, box_iou, build_point_grid, generate_crop_boxes, masks_to_boxes, nms,
                            remove_small_regions, stability_score)


def test_point_grid_and_crop_boxes():
    grid = build_point_grid(4)
    assert grid.shape == (16, 2) and np.allclose(grid[0], [0.125, 0.125]) and np.allclose(grid[-1], [0.875, 0.875])
    assert np.allclose(grid[1], [0.375, 0.125])  # x varies fastest
    boxes, layers = generate_crop_boxes((100, 200), 1, 512 / 1500)
    assert boxes[0] == [0, 0, 200, 100] and layers == [0, 1, 1, 1, 1]
    assert all(b[2] <= 200 and b[3] <= 100 for b in boxes) and boxes[-1][2:] == [200, 100]


def test_stability_score_and_boxes():
    logits = torch.zeros(1, 10, 10) - 5
    logits[0, 2:6, 3:8] = 0.5  # between the -1 and +1 thresholds: unstable
    logits[0, 3:5, 4:6] = 3.0
    assert float(stability_score(logits, 0.0, 1.0)[0]) == pytest.approx(4 / 20)
    masks = torch.zeros(2, 10, 10, dtype=torch.bool)
    masks[0, 2:6, 3:8] = True
    assert masks_to_boxes(masks).tolist() == [[3, 2, 7, 5], [0, 0, 0, 0]]  # inclusive max; empty -> zeros


def test_nms_without_torchvision_keeps_the_best_of_overlapping_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9.]])
    scores = torch.tensor([0.5, 0.9, 0.7, 0.6])
    assert nms(boxes, scores, 0.7).tolist() == [1, 2]
    assert nms(boxes, scores, 1.0).tolist() == [1, 2, 3, 0]
    assert torch.allclose(box_iou(boxes[:1], boxes[:1]), torch.ones(1, 1))


def test_small_regions():
    mask = np.zeros((20, 20), bool)
    mask[2:12, 2:12] = True
    mask[5, 5] = False  # a one-pixel hole
    mask[15, 15] = True  # a one-pixel island
    filled, changed = remove_small_regions(mask, 5, "holes")
    assert changed and filled[5, 5]
    cleaned, changed = remove_small_regions(filled, 5, "islands")
    assert changed and not cleaned[15, 15] and cleaned[2:12, 2:12].all()


@pytest.fixture(scope="module")
def meta_and_ours(tmp_path_factory):
    from tests.helpers.meta_sam import build_small_input_meta_sam

    meta, sa = build_small_input_meta_sam(seed=0)
    path = tmp_path_factory.mktemp("amg") / "tiny.pth"
    torch.save(meta.state_dict(), path)
    return meta, sa, SamBackend.from_pretrained(path)


@pytest.fixture
def scene():
    rng = np.random.default_rng(0)
    img = (rng.random((120, 160, 3)) * 60).astype(np.uint8)
    img[20:70, 30:90] = (230, 30, 30)
    img[60:110, 100:150] = (30, 30, 230)
    return img


def matched(meta_masks, ours):
    ours_masks = [p.mask() for p in ours]
    out = []
    for a in meta_masks:
        out.append(max((np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1) for b in ours_masks), default=0.0))
    return out


@pytest.mark.parametrize("settings", [
    dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0),  # every candidate: 3 per point
    dict(pred_iou_thresh=0.0, stability_score_thresh=0.0),  # with NMS
    dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, crop_n_layers=1, box_nms_thresh=1.0, min_mask_region_area=20),
    dict(),  # Meta's defaults
])
def test_same_masks_as_metas_generator(meta_and_ours, scene, settings):
    meta, sa, ours = meta_and_ours
    expected = sa.SamAutomaticMaskGenerator(meta, points_per_side=4, **settings).generate(scene)
    got = AutomaticMaskGenerator(ours, points_per_side=4, **settings).generate(scene)
    assert len(got) == len(expected)
    ious = matched([m["segmentation"] for m in expected], got)
    assert all(iou >= 0.99 for iou in ious), sorted(ious)[:5]
    for p in got:
        assert p.area == int(mask_utils.area(p.segmentation)) and len(p.bbox) == 4


@pytest.mark.parametrize("layers, heads", [(2, 8), (3, 2)])
def test_the_fast_many_prompt_decoder_computes_what_the_stock_decoder_does(layers, heads):
    """sam/fast_decoder.py against transformers' SamMaskDecoder on the same weights: shared first-block
    projections and projections folded into the tokens change only the order of the arithmetic."""
    from transformers import SamConfig, SamModel

    torch.manual_seed(layers)
    config = SamConfig(vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=128, patch_size=16,
                                          output_channels=64, mlp_dim=64, global_attn_indexes=[0], window_size=0, num_pos_feats=32,
                                          initializer_range=0.02),
                       prompt_encoder_config=dict(hidden_size=64, image_size=128, patch_size=16),
                       mask_decoder_config=dict(hidden_size=64, num_hidden_layers=layers, num_attention_heads=heads, mlp_dim=128,
                                                iou_head_hidden_dim=64))
    model = SamModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    sam = SamBackend(model)
    rng = np.random.default_rng(layers)
    embedding = sam.encode((rng.random((50, 70, 3)) * 255).astype(np.uint8))
    sparse = torch.randn(9, 2, 64)
    for multimask in (True, False):
        with torch.no_grad():
            stock = sam.decode(embedding, sparse_embeddings=sparse, multimask_output=multimask)
        fast = sam.decode_prompts(embedding, sparse, multimask_output=multimask)
        for a, b in zip(stock, fast):
            assert a.shape == b.shape
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
