"""Parity with Meta's ``segment-anything`` at the real ViT-B size (random weights).

Meta's package builds ViT-B, saves its ``.pth``; our backend loads that file through the
conversion and must reproduce Meta's ``SamPredictor`` on the same image and box.
"""

import numpy as np
import pytest
import torch

from vlmsam.sam import SamBackend

pytestmark = pytest.mark.slow


def test_vit_b_matches_meta(tmp_path, scene_image):
    from tests.helpers.meta_sam import import_segment_anything

    sa = import_segment_anything()
    torch.manual_seed(0)
    meta = sa.sam_model_registry["vit_b"](checkpoint=None).eval()
    with torch.no_grad():  # Meta zero-initialises rel-pos tables; make every tensor distinct
        for name, p in meta.named_parameters():
            if "rel_pos" in name or name.endswith("pos_embed"):
                p.normal_(0, 0.02)
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(meta.state_dict(), path)

    predictor = sa.SamPredictor(meta)
    predictor.set_image(scene_image)
    box = np.array([50, 40, 200, 160])
    ref_masks, ref_iou, ref_low = predictor.predict(box=box, multimask_output=False, return_logits=True)
    ref_pixels = meta.preprocess(
        torch.as_tensor(predictor.transform.apply_image(scene_image)).permute(2, 0, 1)[None].float()
    )
    ref_features = predictor.features.clone()
    del predictor, meta

    ours = SamBackend.from_pretrained(path)
    assert ours.model.config.vision_config.num_hidden_layers == 12
    assert list(ours.model.config.vision_config.global_attn_indexes) == [2, 5, 8, 11]
    from PIL import Image

    pixels, _, _ = ours.preprocess(Image.fromarray(scene_image))
    emb = ours.encode(scene_image)
    pred = ours.predict(emb, boxes=[box])

    diffs = {
        "pixels": float((ref_pixels - pixels).abs().max()),
        "embeddings": float((ref_features - emb.embeddings).abs().max()),
        "low_res_logits": float(np.abs(ref_low - pred.low_res_logits[0].numpy()).max()),
        "iou": float(np.abs(ref_iou - pred.iou_scores[0].numpy()).max()),
        "mask_agreement": float(((ref_masks > 0) == pred.masks[0].numpy()).mean()),
    }
    print(f"\nViT-B parity with Meta segment-anything: {diffs}")
    assert diffs["pixels"] < 1e-4
    assert diffs["embeddings"] < 1e-4
    assert diffs["low_res_logits"] < 1e-4
    assert diffs["iou"] < 1e-4
    assert diffs["mask_agreement"] >= 0.9999
