"""What a segmenter is.

Every design (``seg_token`` now; grounding and proposal selection later) implements three calls::

    encoded = segmenter.encode(image)                      # the heavy part, once per image
    result = segmenter.segment(encoded, "the red circle")  # cheap, any number of times
    results = segmenter.segment_many(encoded, [r1, r2])    # several requests, batched

The :class:`EncodedImage` handle holds everything image-specific (original size, SAM embedding,
the VLM's vision features, any per-design cache) and never changes after it is made, so a
segmenter holds no "current image": two images' requests can interleave, and threads can share one
loaded segmenter (Meta's ``SamPredictor`` keeps its features; we pass ours explicitly).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from PIL import Image

from vlmsam.engine.spec import Capabilities
from vlmsam.errors import CheckpointError, PromptError
from vlmsam.io.images import ImageSource, image_key, load_image  # noqa: F401  (image_key: public here too)
from vlmsam.result import SegmentationResult

MAX_REQUEST_CHARS = 2000
MASK_MARK = "[mask {}]"


def check_request(request: str) -> str:
    """The request, stripped; an empty, whitespace-only, oversized or undecodable request (a lone
    surrogate, a control character) is a :class:`PromptError`."""
    from vlmsam.io.text import clean_text

    if isinstance(request, str) and not request.strip():
        raise PromptError("the request is empty: say what to segment, e.g. \"the red circle\"")
    return clean_text(request, "the request", MAX_REQUEST_CHARS).strip()


def is_sentence(request: str) -> bool:
    """A request worded as a sentence (ends with ``?``, ``.`` or ``!`` and has more than four words), as
    opposed to a phrase naming a thing; designs phrase the two differently."""
    return request.rstrip().endswith(("?", ".", "!")) and len(request.split()) > 4


def mark_masks(pieces: Sequence[str]) -> str:
    """Text pieces around the masks -> the answer a person reads, with ``[mask k]`` where mask k goes
    ("Sure, they are [mask 1] and [mask 2].")."""
    out = pieces[0]
    for k, piece in enumerate(pieces[1:], 1):
        out += MASK_MARK.format(k) + piece
    out = re.sub(r"(?<=[\w,;:])\[mask", " [mask", out)  # the [SEG] token carried no space of its own
    out = re.sub(r"(\[mask \d+\])(?=\w)", r"\1 ", out)
    return " ".join(out.split())


def mark_mask_tokens(tokens: Sequence[int], mask_token_id: int, decode) -> str:
    """Generated token ids with ``mask_token_id`` (``[SEG]``) where each mask goes -> :func:`mark_masks`'
    answer; ``decode`` turns the ids between them into text."""
    pieces, current = [], []
    for t in tokens:
        if t == mask_token_id:
            pieces.append(current)
            current = []
        else:
            current.append(t)
    pieces.append(current)
    return mark_masks([decode(piece) if piece else "" for piece in pieces])


@dataclass(frozen=True)
class EncodedImage:
    """One image, encoded by one segmenter. Immutable; pass it to that segmenter's ``segment``.

    Attributes:
        size: ``(H, W)`` of the original image (masks come back at this size).
        key: content hash of the pixels.
        owner: the name of the segmenter that encoded it.
        sam: SAM's image embedding (``sam.backend.ImageEmbedding``) where the design uses SAM.
        vlm: the design's VLM state for this image (vision features, a key/value prefix, ...).
        extras: any further per-design cache (read-only mapping).
        timings: seconds spent encoding, by stage.
    """

    size: tuple[int, int]
    key: str
    owner: str
    sam: Any = None
    vlm: Any = None
    extras: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    timings: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    _token: object = field(default=None, repr=False, compare=False)  # identifies the segmenter instance


def check_fraction(name: str, value) -> None:
    """An option that is a number from 0 to 1 (a threshold), or None; anything else is a :class:`PromptError`."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0):
        raise PromptError(f"option {name} must be a number from 0 to 1, not {value!r}")


@dataclass(frozen=True)
class SegmentOptions:
    """The options every design's ``segment`` / ``segment_many`` take; a design with more subclasses it
    (``options_type``). An option a design does not take is a :class:`PromptError`, never ignored.

    Attributes:
        max_new_tokens: the generation limit for these requests (default: the segmenter's).
        logits_processor: a transformers logits processor for generation (tests force answers with it).
        is_sentence: whether the request is worded as a sentence (one flag, or one per request); None
            lets the design guess.
    """

    max_new_tokens: int | None = None
    logits_processor: Any = None
    is_sentence: bool | None | list = None

    def check(self) -> None:
        n = self.max_new_tokens
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise PromptError(f"option max_new_tokens must be a whole number of at least 1, not {n!r}")
        flags = self.is_sentence if isinstance(self.is_sentence, (list, tuple)) else [self.is_sentence]
        if any(f is not None and not isinstance(f, bool) for f in flags):
            raise PromptError(f"option is_sentence must be true, false or None (or one per request), not {self.is_sentence!r}")


@dataclass(frozen=True)
class HistoryOptions(SegmentOptions):
    """For designs that keep a conversation (``keeps_history``): earlier ``(request, answer)`` turns."""

    history: list | tuple | None = None

    def check(self) -> None:
        super().check()
        turns = self.history or []
        if not isinstance(turns, (list, tuple)) or any(
                not (isinstance(t, (list, tuple)) and len(t) == 2 and all(isinstance(x, str) for x in t)) for t in turns):
            raise PromptError("option history must be a list of (request, answer) pairs of text")


class SegmenterBase:
    """The contract. A design subclasses it and implements :meth:`_encode`, :meth:`_segment_many` (or
    :meth:`_segment`), :meth:`to` and :attr:`device` (and :meth:`save_pretrained` when it has weights
    to save); the public calls check their inputs the same way for every design.

    Attributes:
        name: the registry name of the design.
        label: what this instance is, for people (a checkpoint path, "vlm + sam").
        capabilities: what it can do beyond the contract (:class:`~vlmsam.engine.spec.Capabilities`).
        options_type: the options its ``segment`` takes.
    """

    name = ""
    capabilities = Capabilities()
    options_type: type[SegmentOptions] = SegmentOptions
    max_new_tokens: int | None = None  # the generation limit where a request's options give none

    def __init__(self, label: str = ""):
        self._token = object()
        self.label = label or self.name
        self.encodes = 0  # how often the image encoders actually ran

    @property
    def device(self):
        """The device its models run on."""
        raise NotImplementedError(f"{type(self).__name__} does not say its device")

    def to(self, device) -> SegmenterBase:
        """Move its models to ``device``; returns itself."""
        raise NotImplementedError(f"{type(self).__name__} cannot move to a device")

    def save_pretrained(self, path) -> Path:
        """Write a checkpoint directory that ``vlmsam.load_segmenter(path)`` loads again."""
        raise CheckpointError(f"the {self.name or type(self).__name__} design has nothing to save")

    # ---- what a design implements -------------------------------------------------------------

    def _encode(self, image: Image.Image, key: str) -> EncodedImage:
        raise NotImplementedError

    def _segment_many(self, encoded: EncodedImage, requests: list[str], options: dict) -> list[SegmentationResult]:
        if type(self)._segment is SegmenterBase._segment:  # neither is implemented: say so, do not recurse
            raise NotImplementedError(f"{type(self).__name__} implements neither _segment nor _segment_many")
        return [self._segment(encoded, r, options) for r in requests]

    def _segment(self, encoded: EncodedImage, request: str, options: dict) -> SegmentationResult:
        return self._segment_many(encoded, [request], options)[0]

    # ---- the contract --------------------------------------------------------------------------

    def encode(self, image: ImageSource) -> EncodedImage:
        """Run the image encoders once; the handle serves any number of requests."""
        loaded = load_image(image)
        encoded = self._encode(loaded, image_key(loaded))
        self.encodes += 1
        return encoded

    def segment(self, encoded: EncodedImage, request: str, **options) -> SegmentationResult:
        """Answer one request about an encoded image."""
        self._check_handle(encoded)
        return self._segment(encoded, check_request(request), self._check_options(options))

    def segment_many(self, encoded: EncodedImage, requests: Sequence[str], **options) -> list[SegmentationResult]:
        """Answer several requests about one encoded image; equal to separate :meth:`segment` calls."""
        self._check_handle(encoded)
        if isinstance(requests, str):
            raise PromptError("segment_many takes a list of requests; use segment for one")
        checked = [check_request(r) for r in requests]
        options = self._check_options(options)
        return self._segment_many(encoded, checked, options) if checked else []

    def _check_options(self, given: dict) -> dict:
        """``given`` as this design's options type checks them: an unknown or misspelled option, or a value
        of the wrong kind, is one line naming it; the given ones are passed on."""
        accepted = sorted(f.name for f in fields(self.options_type))
        unknown = sorted(k for k in given if k not in accepted)
        if unknown:
            raise PromptError(f"the {self.name or type(self).__name__} design takes no option '{unknown[0]}'; "
                              f"it takes {', '.join(accepted)}")
        self.options_type(**given).check()
        return dict(given)

    # ---- what designs share -------------------------------------------------------------------

    def encode_parts(self, image: Image.Image, key: str, *, sam=None, vlm=None, extras=None,
                     vlm_cache: bool = True) -> EncodedImage:
        """The handle most designs make: SAM's embedding (``sam``: a SAM backend) and the VLM's image
        prefix (``vlm``: a VLM runtime; ``vlm_cache=False``: its features without the prefix's key/value
        cache), each timed; ``extras`` is a mapping, or ``prefix -> mapping``."""
        parts, timings = {}, {}
        for name, encoder in (("sam", sam), ("vlm", vlm)):
            if encoder is not None:
                t0 = time.perf_counter()
                parts[name] = encoder.encode(image) if name == "sam" else encoder.encode_image(image, cache=vlm_cache)
                timings[f"encode_{name}"] = time.perf_counter() - t0
        more = extras(parts.get("vlm")) if callable(extras) else (extras or {})
        return self.handle(image, key, extras=more, timings=timings, **parts)

    def generation(self, options: dict) -> dict:
        """Generation keywords for these options: ``max_new_tokens`` (the option's, else this segmenter's)
        and the ``logits_processor`` where one is given."""
        kwargs = {"max_new_tokens": options.get("max_new_tokens") or self.max_new_tokens}
        if options.get("logits_processor") is not None:
            kwargs["logits_processor"] = options["logits_processor"]
        return kwargs

    @staticmethod
    def sentence_flags(options: dict, n: int) -> list:
        """``is_sentence`` per request (one flag given for all, or one each; None: the design guesses)."""
        flag = options.get("is_sentence")
        return list(flag) if isinstance(flag, (list, tuple)) else [flag] * n

    def handle(self, image: Image.Image, key: str, **fields) -> EncodedImage:
        """An :class:`EncodedImage` owned by this segmenter (designs call it from ``_encode``)."""
        extras = fields.pop("extras", {})
        timings = fields.pop("timings", {})
        return EncodedImage(size=(image.height, image.width), key=key, owner=self.name,
                            extras=MappingProxyType(dict(extras)), timings=MappingProxyType(dict(timings)),
                            _token=self._token, **fields)

    def _check_handle(self, encoded) -> None:
        if not isinstance(encoded, EncodedImage):
            raise PromptError(f"expected an EncodedImage from {type(self).__name__}.encode(image), got {type(encoded).__name__}")
        if encoded._token is not self._token:
            raise PromptError(f"this image was encoded by another segmenter ({encoded.owner}); encode it with this one")
