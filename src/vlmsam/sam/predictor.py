"""The stateful sugar over a stateless SAM backend, as Meta's ``SamPredictor`` sits over ``Sam``.

:meth:`SamPredictor.set_image` runs the heavy image encoder once and keeps the embedding;
:meth:`SamPredictor.predict` prompts it as often as you like and is cheap. The backend underneath
(:class:`~vlmsam.sam.backend.SamBackend` or :class:`~vlmsam.sam.sam2_backend.Sam2Backend`) holds no
image, so several predictors may share one loaded backend; one predictor belongs to one thread,
because "the current image" is its state.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from vlmsam.errors import PromptError
from vlmsam.io.images import ImageSource, image_key, load_image
from vlmsam.result import SegmentationResult
from vlmsam.sam.backend import SamPrediction


class SamPredictor:
    """Encode an image once, then prompt it any number of times.

    >>> predictor = SamPredictor.from_pretrained("weights/sam_vit_h_4b8939.pth")
    >>> predictor.set_image("photo.jpg")                          # the heavy encoder runs here
    >>> out = predictor.predict(boxes=[[10, 20, 200, 240]])       # XYXY, original pixels; cheap
    >>> out.masks.shape                                           # (1, 1, H, W) bool
    >>> result = predictor("other.jpg", boxes=[[5, 5, 50, 50]])   # set_image + predict -> SegmentationResult
    """

    def __init__(self, backend):
        self.backend = backend
        self._embedding = None

    @classmethod
    def from_pretrained(cls, name_or_path, *, device=None, dtype=None) -> SamPredictor:
        """A predictor over :func:`vlmsam.sam.load_sam_backend` (SAM or SAM 2, chosen by the checkpoint)."""
        from vlmsam.sam import load_sam_backend

        return cls(load_sam_backend(name_or_path, device=device, dtype=dtype))

    def set_image(self, image: ImageSource):
        """Encode ``image`` and keep its embedding for later prompts; the same pixels as the image
        already set are not encoded again. Returns the embedding."""
        loaded = load_image(image)
        if self._embedding is None or self._embedding.key != image_key(loaded):
            self._embedding = self.backend.encode(loaded)
        return self._embedding

    def reset_image(self) -> None:
        """Forget the current image (its embedding is freed once nothing else holds it)."""
        self._embedding = None

    @property
    def is_image_set(self) -> bool:
        return self._embedding is not None

    @property
    def embedding(self):
        """The current image's embedding (an ``ImageEmbedding`` for SAM); an error if none is set."""
        if self._embedding is None:
            raise PromptError("no image is set: call set_image(image) before predict()")
        return self._embedding

    def predict(self, boxes=None, points=None, point_labels=None, mask_input=None, *,
                multimask_output: bool = False) -> SamPrediction:
        """Masks for the current image: ``boxes (N, 4)`` XYXY and/or ``points (N, P, 2)`` x/y in
        original pixels, ``point_labels (N, P)`` 1 foreground / 0 background, ``mask_input (N, 1, 4g, 4g)``
        low-res logits; see :meth:`SamBackend.encode_prompts`."""
        return self.backend.predict(self.embedding, boxes=boxes, points=points, point_labels=point_labels,
                                    mask_input=mask_input, multimask_output=multimask_output)

    def __call__(self, image: ImageSource, boxes=None, points=None, point_labels=None, *,
                 multimask_output: bool = False) -> SegmentationResult:
        """:meth:`set_image` then :meth:`predict`, as a :class:`SegmentationResult`: one mask per prompt
        (with ``multimask_output`` SAM proposes three and the best by predicted IoU is kept); ``boxes``
        are the prompt boxes clipped to the image."""
        t0 = time.perf_counter()
        embedding = self.set_image(image)
        t1 = time.perf_counter()
        pred = self.predict(boxes, points, point_labels, multimask_output=multimask_output)
        if multimask_output:
            pred = pred.best()
        t2 = time.perf_counter()
        box_array = None
        if boxes is not None:  # already checked by predict; clipped as the model saw them
            h, w = embedding.original_size
            plain = boxes.detach().cpu().numpy() if isinstance(boxes, torch.Tensor) else boxes
            box_array = np.array(plain, dtype=np.float32).reshape(-1, 4)
            box_array[:, 0::2] = box_array[:, 0::2].clip(0, w)
            box_array[:, 1::2] = box_array[:, 1::2].clip(0, h)
        return SegmentationResult(
            masks=pred.masks[:, 0].cpu().numpy(),
            boxes=box_array,
            scores=pred.iou_scores[:, 0].cpu().numpy(),
            timings={"encode_image": t1 - t0, "decode_masks": t2 - t1},
        )
