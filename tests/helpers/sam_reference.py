"""SAM masks computed without vlmsam's SAM code: the published recipe written out here.

Tests compare what a segmenter hands back with what transformers' ``SamModel.forward`` gives for
prompts the test writes by hand. Nothing here calls ``vlmsam``: the preprocessing (longest side to
the model's input size with PIL bilinear, Meta's mean/std, right/bottom zero padding) and the mask
post-processing (upsample to the padded square, crop the padding, resize to the original, threshold
at 0) follow DESIGN.md's "SAM preprocessing" and Meta's ``SamPredictor``. Prompt coordinates are
given in the *resized input frame* (original pixels times ``size / max(H, W)``), which the tests
compute by hand, as SamProcessor's ``input_boxes`` / ``input_points`` would be after its rescaling.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)


def sam_pixels(image: np.ndarray, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(1, 3, size, size)`` model input of an ``(H, W, 3) uint8`` image and its resized ``(h, w)``."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR), np.float32)
    padded = np.zeros((size, size, 3), np.float32)
    padded[:nh, :nw] = (resized - PIXEL_MEAN) / PIXEL_STD
    return torch.from_numpy(padded).permute(2, 0, 1)[None], (nh, nw)


@torch.inference_mode()
def sam_reference(model, image: np.ndarray, *, boxes=None, points=None, multimask: bool = True):
    """``(logits (N, M, H, W), iou (N, M))`` from ``model`` (a transformers ``SamModel``) for N prompts.

    ``boxes``: ``(N, 4)`` XYXY and ``points``: ``(N, P, 2)`` x/y (all foreground), both in the resized
    input frame. Logits are in original pixels; a pixel is in the mask where its logit is above 0.
    """
    size = model.config.vision_config.image_size
    pixels, (nh, nw) = sam_pixels(image, size)
    kwargs = {}
    if boxes is not None:
        kwargs["input_boxes"] = torch.tensor(np.asarray(boxes, np.float32))[None]
    if points is not None:
        pts = torch.tensor(np.asarray(points, np.float32))
        kwargs["input_points"] = pts[None]
        kwargs["input_labels"] = torch.ones(pts.shape[:2], dtype=torch.long)[None]
    out = model(pixel_values=pixels, multimask_output=multimask, **kwargs)
    low = out.pred_masks[0].float()  # (N, M, 4g, 4g)
    up = F.interpolate(low, (size, size), mode="bilinear", align_corners=False)[..., :nh, :nw]
    logits = F.interpolate(up, image.shape[:2], mode="bilinear", align_corners=False)
    return logits.numpy(), out.iou_scores[0].float().numpy()


def best_of(logits: np.ndarray, iou: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt the candidate with the highest predicted IoU: ``(logits (N, H, W), iou (N,))``."""
    k = iou.argmax(axis=1)
    rows = np.arange(len(k))
    return logits[rows, k], iou[rows, k]


def assert_masks_match(masks: np.ndarray, logits: np.ndarray, tol: float = 1e-3) -> None:
    """``masks`` (bool) are ``logits > 0``, except perhaps at pixels whose logit is within ``tol`` of 0
    (float rounding between two ways of computing the same thing), and those are rare."""
    masks, expected = np.asarray(masks), np.asarray(logits) > 0
    assert masks.shape == expected.shape, (masks.shape, expected.shape)
    differ = masks != expected
    assert not (differ & (np.abs(logits) >= tol)).any(), f"{int(differ.sum())} pixels differ from the reference"
    assert differ.sum() <= max(1, expected.size // 1000)
