"""SAM over a transformers ``SamModel``, stateless: encode an image, then prompt its embedding.

The heavy part (the ViT image encoder) runs in :meth:`SamBackend.encode`, which returns an
:class:`ImageEmbedding`; :meth:`SamBackend.predict` and :meth:`SamBackend.decode` take that embedding
as an argument and cost only the prompt encoder and mask decoder. The backend holds no image, so one
backend serves any number of images and threads; "the current image" lives in
:class:`vlmsam.sam.predictor.SamPredictor`, as Meta's ``SamPredictor`` sits over ``Sam``.

Preprocessing (longest side to the model's input size, mean/std normalisation, right/bottom
padding) and mask post-processing (upsample, crop the padding, resize to the original image) are
transformers' ``SamImageProcessorPil``: the one copy of those steps in this project. The PIL
variant is used on purpose: it resizes exactly as Meta's ``segment-anything`` does and needs no
torchvision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import SamModel

from vlmsam.errors import PromptError
from vlmsam.io.images import ImageSource, image_key, load_image
from vlmsam.sam.preprocess import build_image_processor, sam_pixels

MASK_THRESHOLD = 0.0  # logit threshold of a binary mask, as in Meta's predictor


@dataclass
class ImageEmbedding:
    """One image as SAM's encoder sees it.

    Attributes:
        embeddings: ``(1, C, g, g)`` image embedding (C = 256, g = 64 for the released models).
        original_size: ``(H, W)`` of the image as given.
        input_size: ``(h, w)`` after resizing the longest side to the model's input size, before padding.
        key: a content hash of the image (:func:`vlmsam.io.images.image_key`), which lets a
            predictor or cache skip re-encoding the same pixels.
    """

    embeddings: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    key: str = ""


@dataclass
class SamPrediction:
    """Masks for N prompts, M candidate masks each (M = 1, or 3 with ``multimask_output``).

    Attributes:
        masks: ``(N, M, H, W) bool`` in original-image pixels.
        iou_scores: ``(N, M) float`` SAM's predicted IoU of each mask.
        low_res_logits: ``(N, M, 4g, 4g) float`` logits in the padded input frame (256² for
            released models); feed one back as ``mask_input`` to refine.
    """

    masks: torch.Tensor
    iou_scores: torch.Tensor
    low_res_logits: torch.Tensor

    def best(self) -> SamPrediction:
        """Keep, for each prompt, the candidate with the highest predicted IoU (M becomes 1)."""
        idx = self.iou_scores.argmax(dim=1)
        rows = torch.arange(len(idx))
        return SamPrediction(
            self.masks[rows, idx][:, None], self.iou_scores[rows, idx][:, None], self.low_res_logits[rows, idx][:, None]
        )


def require_embedding(embedding, kind: type = ImageEmbedding):
    """``embedding`` itself if it is a ``kind``; otherwise one line saying how to get one (the
    backend holds no image of its own to fall back to)."""
    if not isinstance(embedding, kind):
        got = "None" if embedding is None else type(embedding).__name__
        raise PromptError(f"expected the {kind.__name__} of an image, got {got}: call encode(image) first and pass its result")
    return embedding


class SamBackend:
    """Segment Anything over a transformers ``SamModel``; it keeps no image between calls.

    >>> sam = SamBackend.from_pretrained("weights/sam_vit_h_4b8939.pth")  # or "facebook/sam-vit-huge"
    >>> emb = sam.encode("photo.jpg")                          # the heavy encoder, once per image
    >>> out = sam.predict(emb, boxes=[[10, 20, 200, 240]])     # XYXY, original pixels
    >>> out.masks.shape                                        # (1, 1, H, W)
    """

    def __init__(self, model: SamModel):
        self.model = model
        self.processor = build_image_processor(model.config)
        # A statistic, not image state: tests and callers' caches check the encoder ran only when needed.
        self.encoder_calls = 0  # how often the image encoder actually ran (cache hits excluded)

    @classmethod
    def from_pretrained(cls, name_or_path, *, device=None, dtype: torch.dtype | None = None) -> SamBackend:
        """Load from a Meta ``.pth``, a transformers directory or a hub id (see :func:`load_sam_model`)."""
        from vlmsam.sam.checkpoints import load_sam_model

        return cls(load_sam_model(name_or_path, device=device, dtype=dtype))

    def to(self, device) -> SamBackend:
        self.model.to(device)
        return self

    def save_pretrained(self, path) -> None:
        self.model.save_pretrained(path)

    @property
    def device(self) -> torch.device:
        return self.model.shared_image_embedding.positional_embedding.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared_image_embedding.positional_embedding.dtype

    @property
    def embedding_grid(self) -> int:
        return self.model.config.prompt_encoder_config.image_embedding_size

    # ---- the expensive part: once per image -------------------------------------------------

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """``(1, 3, S, S)`` normalised, padded pixels; original ``(H, W)``; resized ``(h, w)``."""
        return sam_pixels(self.processor, image)

    def encode(self, image: ImageSource) -> ImageEmbedding:
        """Run the image encoder (no gradients) and return the embedding with its geometry."""
        image = load_image(image)
        key = image_key(image)
        pixels, original, resized = self.preprocess(image)
        with torch.inference_mode():
            embeddings = self.model.vision_encoder(pixels.to(self.device, self.dtype)).last_hidden_state
        self.encoder_calls += 1
        return ImageEmbedding(embeddings.clone(), original, resized, key)

    # ---- the cheap part: any number of prompts -------------------------------------------------

    def transform_coords(self, coords: torch.Tensor, embedding: ImageEmbedding) -> torch.Tensor:
        """Original-pixel ``(..., 2)`` x/y coordinates -> the resized input frame."""
        (h0, w0), (h1, w1) = embedding.original_size, embedding.input_size
        scale = torch.tensor([w1 / w0, h1 / h0], dtype=coords.dtype, device=coords.device)
        return coords * scale

    def encode_prompts(
        self,
        embedding: ImageEmbedding,
        boxes=None,
        points=None,
        point_labels=None,
        mask_input=None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Sparse ``(N, k, C)`` and dense ``(N, C, g, g)`` prompt embeddings (either may be None).

        Args:
            boxes: ``(N, 4)`` XYXY in original pixels.
            points: ``(N, P, 2)`` x/y in original pixels (``(P, 2)`` means one prompt).
            point_labels: ``(N, P)``: 1 foreground, 0 background (default all 1).
            mask_input: ``(N, 1, 4g, 4g)`` low-res logits from an earlier prediction.
        """
        embedding = require_embedding(embedding)
        boxes_t = None
        if boxes is not None:
            boxes_t = self._check_boxes(boxes, embedding)
            boxes_t = self.transform_coords(boxes_t.reshape(-1, 2, 2), embedding).reshape(-1, 4).to(self.device, self.dtype)
        points_t, labels_t = self._check_points(points, point_labels, embedding) if points is not None else (None, None)
        sizes = {len(t) for t in (boxes_t, points_t) if t is not None}
        if mask_input is not None:
            mask_input = torch.as_tensor(mask_input, dtype=self.dtype, device=self.device)
            if mask_input.ndim == 3:
                mask_input = mask_input[:, None]
            low = 4 * self.embedding_grid
            if mask_input.shape[1:] != (1, low, low):
                raise PromptError(f"mask_input must be (N, 1, {low}, {low}) low-res logits, got {tuple(mask_input.shape)}")
            sizes.add(len(mask_input))
        if len(sizes) > 1:
            raise PromptError(f"boxes, points and mask_input must hold the same number of prompts, got {sorted(sizes)}")
        pe = self.model.prompt_encoder
        sparse = None
        if points_t is not None:
            # A padding point is added when no box is given, exactly as in Meta's SamPredictor.
            sparse = pe._embed_points(points_t[:, None], labels_t[:, None], pad=boxes_t is None)[:, 0]
        if boxes_t is not None:
            box_emb = pe._embed_boxes(boxes_t[:, None])[:, 0]
            sparse = box_emb if sparse is None else torch.cat([sparse, box_emb], dim=1)
        dense = pe.mask_embed(mask_input) if mask_input is not None else None
        return sparse, dense

    def decode(
        self,
        embedding: ImageEmbedding | torch.Tensor,
        sparse_embeddings: torch.Tensor | None = None,
        dense_embeddings: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the mask decoder; gradients flow to the prompts and the decoder when enabled.

        This is the entry point of the ``[SEG]`` path: ``sparse_embeddings`` may be projected VLM
        hidden states of shape ``(N, k, C)``.

        Args:
            embedding: an :class:`ImageEmbedding` or a raw ``(1 or N, C, g, g)`` tensor.

        Returns:
            low-res logits ``(N, M, 4g, 4g)`` and predicted IoU ``(N, M)``.
        """
        if not isinstance(embedding, torch.Tensor):
            embedding = require_embedding(embedding)
        image = embedding.embeddings if isinstance(embedding, ImageEmbedding) else embedding
        candidates = [t.shape[0] for t in (sparse_embeddings, dense_embeddings) if t is not None]
        n = candidates[0] if candidates else image.shape[0]
        grid = image.shape[-2:]
        if image.shape[0] == 1 and n > 1:
            image = image.expand(n, -1, -1, -1)
        positional = self.model.get_image_wide_positional_embeddings().expand(n, -1, -1, -1)
        if dense_embeddings is None:
            no_mask = self.model.prompt_encoder.no_mask_embed.weight
            dense_embeddings = no_mask.reshape(1, -1, 1, 1).expand(n, -1, *grid)
        # Prompts ride on the batch axis (one decoder batch element each); point_batch is 1.
        low_res, iou = self.model.mask_decoder(
            image_embeddings=image.to(self.dtype),
            image_positional_embeddings=positional,
            sparse_prompt_embeddings=None if sparse_embeddings is None else sparse_embeddings[:, None].to(self.dtype),
            dense_prompt_embeddings=dense_embeddings,
            multimask_output=multimask_output,
        )
        return low_res[:, 0], iou[:, 0]

    @torch.no_grad()
    def decode_prompts(self, embedding: ImageEmbedding, sparse_embeddings: torch.Tensor,
                       multimask_output: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`decode` for many sparse prompts on one image without gradients (the automatic mask
        generator's case), through :func:`vlmsam.sam.fast_decoder.decode_many`: the same results with
        the image-side projections shared or folded into the few tokens."""
        from vlmsam.sam.fast_decoder import decode_many

        image = require_embedding(embedding).embeddings.to(self.dtype)
        grid = image.shape[-2:]
        no_mask = self.model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *grid)
        return decode_many(self.model.mask_decoder, image, self.model.get_image_wide_positional_embeddings()[:1].to(self.dtype),
                           no_mask.to(self.dtype), sparse_embeddings.to(self.dtype), multimask_output)

    def upscale_logits(self, low_res_logits: torch.Tensor, embedding: ImageEmbedding) -> torch.Tensor:
        """``(N, M, 4g, 4g)`` logits -> ``(N, M, H, W)`` logits in original pixels (differentiable)."""
        embedding = require_embedding(embedding)
        if low_res_logits.shape[0] == 0:
            return low_res_logits.new_zeros((0, low_res_logits.shape[1], *embedding.original_size))
        return self.processor.post_process_masks(
            [low_res_logits.float()], [embedding.original_size], [embedding.input_size], binarize=False
        )[0]

    def predict(
        self,
        embedding: ImageEmbedding,
        *,
        boxes=None,
        points=None,
        point_labels=None,
        mask_input=None,
        multimask_output: bool = False,
    ) -> SamPrediction:
        """Masks for ``embedding`` (from :meth:`encode`) from boxes and/or points and/or a mask.

        Coordinates are in original-image pixels; see :meth:`encode_prompts` for shapes.
        """
        embedding = require_embedding(embedding)
        with torch.inference_mode():
            sparse, dense = self.encode_prompts(embedding, boxes, points, point_labels, mask_input)
            if sparse is None and dense is None:
                raise PromptError("give at least one prompt: a box, a point or a mask")
            low_res, iou = self.decode(embedding, sparse, dense, multimask_output)
            logits = self.upscale_logits(low_res, embedding)
        return SamPrediction(logits > MASK_THRESHOLD, iou.float(), low_res.float())

    # ---- prompt checks ---------------------------------------------------------------------------

    def _check_boxes(self, boxes, embedding: ImageEmbedding) -> torch.Tensor:
        """Validate ``(N, 4)`` XYXY boxes in original pixels and clip them to the image."""
        b = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4) if not isinstance(boxes, torch.Tensor) else boxes.float().reshape(-1, 4)
        h, w = embedding.original_size
        for i, (x1, y1, x2, y2) in enumerate(b.tolist()):
            if not all(np.isfinite([x1, y1, x2, y2])):
                raise PromptError(f"box {i} {[x1, y1, x2, y2]} has non-finite coordinates")
            if x2 < x1 or y2 < y1:
                raise PromptError(f"box {i} {[x1, y1, x2, y2]}: expected XYXY with x1 <= x2 and y1 <= y2")
            if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
                raise PromptError(f"box {i} {[x1, y1, x2, y2]} lies outside the {w}x{h} image")
        clipped = b.clone()
        clipped[:, 0::2] = clipped[:, 0::2].clamp(0, w)
        clipped[:, 1::2] = clipped[:, 1::2].clamp(0, h)
        return clipped

    def _check_points(self, points, labels, embedding: ImageEmbedding) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.as_tensor(np.asarray(points, dtype=np.float32)) if not isinstance(points, torch.Tensor) else points.float()
        if p.ndim == 2:
            p = p[None]
        if p.ndim != 3 or p.shape[-1] != 2:
            raise PromptError(f"points must be (N, P, 2) x/y pairs, got shape {tuple(p.shape)}")
        h, w = embedding.original_size
        for x, y in p.reshape(-1, 2).tolist():
            if not (0 <= x <= w and 0 <= y <= h):
                raise PromptError(f"point ({x:g}, {y:g}) lies outside the {w}x{h} image")
        if labels is None:
            l = torch.ones(p.shape[:2], dtype=torch.int64)
        else:
            l = torch.as_tensor(np.asarray(labels, dtype=np.int64)).reshape(p.shape[:2])
            if not bool(((l == 0) | (l == 1)).all()):
                raise PromptError(f"point labels must be 1 (foreground) or 0 (background), got {l.flatten().tolist()}")
        return self.transform_coords(p, embedding).to(self.device, self.dtype), l.to(self.device)
