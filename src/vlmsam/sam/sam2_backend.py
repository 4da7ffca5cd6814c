"""SAM 2 (transformers' ``Sam2Model``) behind the same predictor interface as :class:`SamBackend`.

transformers' ``Sam2ImageProcessor`` needs torchvision, so the preprocessing is ours, written from
SAM 2's definition (``sam2/utils/transforms.py``): RGB in [0, 1], resized to the model's square input
(1024 x 1024, bilinear with antialiasing, aspect ratio *not* kept), normalised with ImageNet's mean
and std. Prompts are scaled into that square; low-resolution mask logits are resized bilinearly
straight back to the original size. A test checks each step against that definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vlmsam.errors import PromptError, first_line
from vlmsam.io.images import ImageSource, load_image
from vlmsam.sam.backend import MASK_THRESHOLD, SamPrediction, require_embedding

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass
class Sam2Embedding:
    """SAM 2's image features (three levels, coarsest last) and the image's original ``(H, W)``."""

    features: list
    original_size: tuple[int, int]
    key: str = ""


def sam2_pixels(image, size: int) -> torch.Tensor:
    """``(1, 3, size, size)`` float pixels of an RGB image, as SAM 2 preprocesses them."""
    rgb = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)[None].float() / 255.0
    resized = F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (resized - mean) / std


class SquareInputBackend:
    """What SAM 2 and SAM 3 backends share: a transformers ``model``, a square input, logits resized to the image."""

    model = None

    def to(self, device):
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def upscale_logits(self, low_res_logits: torch.Tensor, embedding) -> torch.Tensor:
        """Low-resolution mask logits resized to the original image (as ``predict`` does)."""
        return F.interpolate(low_res_logits.float(), size=embedding.original_size, mode="bilinear", align_corners=False)


class Sam2Backend(SquareInputBackend):
    """SAM 2 with :class:`SamBackend`'s stateless interface: ``encode(image)`` then ``predict(embedding, ...)``."""

    def __init__(self, model):
        self.model = model.eval()
        self.size = int(model.config.vision_config.backbone_config.image_size[0]
                        if isinstance(model.config.vision_config.backbone_config.image_size, (list, tuple))
                        else model.config.vision_config.backbone_config.image_size)
        self.encoder_calls = 0

    @classmethod
    def from_pretrained(cls, name_or_path, *, device=None, dtype=None) -> Sam2Backend:
        from transformers import Sam2Model

        from vlmsam.errors import CheckpointError

        from vlmsam.hub import check_available

        check_available(str(name_or_path), "SAM 2")
        try:
            model = Sam2Model.from_pretrained(str(name_or_path), **({"dtype": dtype} if dtype else {}))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{name_or_path}: not a SAM 2 model ({first_line(exc)})") from None
        if device is not None:
            model.to(device)
        return cls(model)

    def encode(self, image: ImageSource) -> Sam2Embedding:
        from vlmsam.io.images import image_key

        image = load_image(image)
        pixels = sam2_pixels(image, self.size).to(self.device, self.dtype)
        with torch.inference_mode():
            features = self.model.get_image_embeddings(pixels)
        self.encoder_calls += 1
        return Sam2Embedding([f.clone() for f in features], (image.height, image.width), image_key(image))

    def predict(self, embedding: Sam2Embedding, *, boxes=None, points=None, point_labels=None, mask_input=None,
                multimask_output: bool = False) -> SamPrediction:
        """Masks for ``embedding`` (from :meth:`encode`) from XYXY ``boxes (N, 4)`` and/or ``points (N, P, 2)``
        in original pixels (as SamBackend)."""
        embedding = require_embedding(embedding, Sam2Embedding)
        if mask_input is not None:
            raise PromptError("mask prompts are not supported with SAM 2 here")
        h, w = embedding.original_size
        kwargs = square_prompts(self.size, embedding.original_size, self.device, self.dtype, boxes, points, point_labels)
        with torch.inference_mode():
            out = self.model(image_embeddings=embedding.features, multimask_output=multimask_output, **kwargs)
            low = out.pred_masks[0].float()  # (N, M, 256, 256)
            logits = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
        return SamPrediction(logits > MASK_THRESHOLD, out.iou_scores[0].float(), low)

    def save_pretrained(self, path) -> None:
        self.model.save_pretrained(path)


def square_prompts(size: int, original_size: tuple[int, int], device, dtype, boxes=None, points=None, point_labels=None) -> dict:
    """Box and point prompts in original pixels as SAM 2-style models take them: scaled into the square
    ``size`` x ``size`` input (aspect ratio not kept), boxes ``(1, N, 4)``, points ``(1, N, P, 2)`` with labels.
    Boxes are not clipped to the image, as SAM 2's own ``SAM2ImagePredictor`` (the caller's array stays as given)."""
    h, w = original_size
    scale = torch.tensor([size / w, size / h], dtype=torch.float32)
    kwargs, n = {}, None
    if boxes is not None:
        b = torch.tensor(np.asarray(boxes, np.float32)).reshape(-1, 4)
        if not torch.isfinite(b).all():
            raise PromptError("boxes must have finite coordinates")
        kwargs["input_boxes"] = (b.reshape(-1, 2, 2) * scale).reshape(1, -1, 4).to(device, dtype)
        n = len(b)
    if points is not None:
        p = torch.as_tensor(np.asarray(points, np.float32))
        p = p[None] if p.ndim == 2 else p
        if p.ndim != 3 or p.shape[-1] != 2 or (n is not None and len(p) != n):
            raise PromptError(f"points must be (N, P, 2) with N = the number of boxes, got {tuple(p.shape)}")
        labels = torch.ones(p.shape[:2], dtype=torch.int32) if point_labels is None else \
            torch.as_tensor(np.asarray(point_labels, np.int32)).reshape(p.shape[:2])
        kwargs["input_points"] = (p * scale)[None].to(device, dtype)
        kwargs["input_labels"] = labels[None].to(device)
        n = len(p)
    if n is None:
        raise PromptError("give at least one prompt: a box or a point")
    return kwargs
