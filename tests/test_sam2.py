"""SAM 2 through transformers' Sam2Model with our own preprocessing (Sam2ImageProcessor needs torchvision).

Meta's ``sam2`` package cannot be imported here (it builds a CUDA extension and imports torchvision), so
each step is checked against SAM 2's definition written out below (sam2/utils/transforms.py:
ToTensor, Resize((1024, 1024)) bilinear with antialiasing, Normalize(ImageNet); masks resized
bilinearly back to the original size; prompts scaled into the 1024 x 1024 square)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.helpers.tiny_segmenters import save_tiny_sam2
from vlmsam.sam import load_sam_backend
from vlmsam.sam.sam2_backend import Sam2Backend, sam2_pixels


@pytest.fixture(scope="module")
def sam2(tmp_path_factory):
    return load_sam_backend(save_tiny_sam2(tmp_path_factory.mktemp("sam2") / "sam2"))


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    img = (rng.random((96, 160, 3)) * 255).astype(np.uint8)
    img[20:60, 30:90] = (230, 30, 30)
    return Image.fromarray(img)


def reference_pixels(image: Image.Image) -> torch.Tensor:
    x = np.asarray(image, dtype=np.float32) / 255.0  # ToTensor
    t = torch.from_numpy(x).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=(1024, 1024), mode="bilinear", align_corners=False, antialias=True)  # Resize, antialias
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    return torch.from_numpy((t[0].numpy() - mean) / std)[None]


def test_loads_as_sam2_and_preprocesses_as_defined(sam2, image):
    assert isinstance(sam2, Sam2Backend) and sam2.size == 1024
    diff = (sam2_pixels(image, 1024) - reference_pixels(image)).abs().max()
    assert diff < 1e-5, diff


def test_predict_equals_the_model_on_scaled_prompts(sam2, image):
    emb = sam2.encode(image)
    boxes = np.array([[30, 20, 90, 60], [100, 10, 150, 80]], np.float32)
    points = np.array([[[60, 40]], [[120, 40]]], np.float32)
    ours = sam2.predict(boxes=boxes, points=points, multimask_output=True, embedding=emb)
    sx, sy = 1024 / 160, 1024 / 96
    with torch.no_grad():
        feats = sam2.model.get_image_embeddings(reference_pixels(image))
        out = sam2.model(image_embeddings=feats, input_boxes=torch.tensor(boxes * [sx, sy, sx, sy])[None],
                         input_points=torch.tensor(points * [sx, sy])[None], input_labels=torch.ones(1, 2, 1, dtype=torch.int32),
                         multimask_output=True)
    expected = F.interpolate(out.pred_masks[0], size=(96, 160), mode="bilinear", align_corners=False) > 0
    assert ours.masks.shape == (2, 3, 96, 160)
    assert (ours.masks == expected).float().mean() > 0.9999
    torch.testing.assert_close(ours.iou_scores, out.iou_scores[0].float(), atol=1e-4, rtol=1e-4)


def test_box_prompt_runs_on_sam2(sam2, image, tmp_path):
    from tests.helpers.tiny_segmenters import box_prompt

    seg = box_prompt(tmp_path)
    seg.sam = sam2
    result = seg.segment(seg.encode(image), "the red box")
    assert result.masks.shape[1:] == (96, 160)


def test_predictor_runs_over_sam2(sam2, image):
    """SamPredictor needs only ``encode`` and ``predict(embedding, ...)``, which SAM 2 has too."""
    from vlmsam.errors import PromptError
    from vlmsam.sam import SamPredictor

    with pytest.raises(PromptError, match=r"call encode\(image\) first"):
        sam2.predict(None, boxes=[[30, 20, 90, 60]])
    predictor = SamPredictor(sam2)
    emb = predictor.set_image(image)
    assert predictor.set_image(image.copy()) is emb  # same pixels: not encoded again
    ours = predictor.predict(boxes=[[30, 20, 90, 60]])
    ref = sam2.predict(emb, boxes=[[30, 20, 90, 60]])
    assert torch.equal(ours.masks, ref.masks) and torch.equal(ours.iou_scores, ref.iou_scores)
