"""One entry point for every segmenter: ``load_segmenter``.

>>> from vlmsam import load_segmenter
>>> seg = load_segmenter()                      # the bundled vlmsam-tiny (synthetic shape scenes only)
>>> seg.set_image("scene.jpg")
>>> result = seg.segment("the largest triangle")    # SegmentationResult: masks, boxes, answer text
>>> seg("other.jpg", "all the stars")            # set_image + segment in one call

``set_image`` / ``segment`` are sugar over the engine's explicit handle, which servers and threads
use directly::

>>> encoded = seg.encode("scene.jpg")           # EncodedImage: immutable, shareable across threads
>>> seg.segment_many(encoded, ["the red circle", "all the stars"])

Real models: ``load_segmenter("runs/exp1/checkpoints/step_005000")`` (the checkpoint records its
design) or ``load_segmenter(vlm="Qwen/Qwen2.5-VL-7B-Instruct", sam="facebook/sam-vit-huge")`` (base
models by hub id or path; the ``[SEG]`` projection is then untrained, which is only useful to
start training).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vlmsam.engine import registry
from vlmsam.engine.contract import MAX_REQUEST_CHARS, EncodedImage, check_request  # noqa: F401  (public API)
from vlmsam.io.images import ImageSource
from vlmsam.result import SegmentationResult

SEGMENTERS = registry.available()


class Segmenter:
    """A loaded segmenter with a "current image" kept in *this* object only (the engine keeps none).

    ``engine`` is the design's contract object; ``encode``/``segment_many`` pass straight to it.
    """

    def __init__(self, engine, name: str):
        self.engine = engine
        self.name = name
        self.current: EncodedImage | None = None

    @property
    def model(self):
        """The design's underlying model (``SegTokenModel`` for ``seg_token``)."""
        return self.engine.model

    def encode(self, image: ImageSource) -> EncodedImage:
        return self.engine.encode(image)

    def set_image(self, image: ImageSource) -> EncodedImage:
        """Encode ``image`` (the same pixels as the current image are not encoded again)."""
        from vlmsam.engine.contract import image_key
        from vlmsam.io.images import load_image

        loaded = load_image(image)
        if self.current is None or self.current.key != image_key(loaded):
            self.current = self.engine.encode(loaded)
        return self.current

    def segment(self, request, image=None, **options) -> SegmentationResult:
        """``segment(request)`` about the current image, ``segment(request, image=...)``, or, as the engine
        takes it, ``segment(encoded, request)`` with a handle from :meth:`encode`."""
        if isinstance(request, EncodedImage):  # the engine's order: (handle, request)
            return self.engine.segment(request, image, **options)
        if image is not None:
            self.set_image(image)
        if self.current is None:
            raise RuntimeError("no image is set: call set_image(image) or pass image=")
        return self.engine.segment(self.current, request, **options)

    def segment_many(self, encoded: EncodedImage, requests: Sequence[str], **options) -> list[SegmentationResult]:
        return self.engine.segment_many(encoded, requests, **options)

    def __call__(self, image: ImageSource, request: str) -> SegmentationResult:
        return self.segment(request, image=image)


def load_segmenter(name_or_path: str | Path | None = None, segmenter: str | None = None, *, vlm: str | None = None,
                   sam: str | None = None, device=None, dtype=None, max_new_tokens: int | None = None,
                   vlm_endpoint: str | None = None, detector: str | None = None, style: str | None = None) -> Segmenter:
    """Load a segmenter. With no arguments: the bundled ``vlmsam-tiny``. A checkpoint directory names
    its own design; ``segmenter`` is needed only for base models (``vlm``/``sam``) or a design's own
    bundled default (``load_segmenter(segmenter="box_prompt")``). ``vlm_endpoint``: an OpenAI-compatible
    server that serves the model named ``vlm`` (grounding designs). An argument the design does not take
    is a one-line :class:`~vlmsam.engine.spec.UsageError`. ``style``: how a grounding VLM is asked (box_prompt;
    ``seg_zero`` / ``vision_reasoner`` run those models' published inference)."""
    from vlmsam.devices import resolve_device, resolve_dtype
    from vlmsam.engine.spec import BuildSpec

    spec = BuildSpec(path=name_or_path or None, vlm=vlm, sam=sam, detector=detector, vlm_endpoint=vlm_endpoint,
                     device=resolve_device(device), dtype=resolve_dtype(dtype), max_new_tokens=max_new_tokens, style=style)
    engine = registry.load(spec, segmenter)
    return Segmenter(engine, engine.label)
