"""One check of one sample, run alike by ``vlmsam data check``, ``evaluate``, ``score`` and ``train``.

:func:`load_checked` is the only way those commands read a sample: the image must exist and load
through :func:`vlmsam.io.images.load_image` (a FIFO, a truncated file, a 1x20000 strip are refused
there), the annotation must parse (each loader checks its own fields), every request must be one the
engine accepts (:func:`vlmsam.engine.contract.check_request`), every other turn clean text of a
bounded length, and the targets must have the image's size. Whatever fails is a
:class:`~vlmsam.data.sample.BadSample` naming the file and counted under one of
:data:`~vlmsam.data.sample.PROBLEMS`; so ``data check`` says "usable" exactly when the others will
not skip or stop.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from PIL import Image

from vlmsam.data.base import SegDataset
from vlmsam.data.sample import BROKEN_ANNOTATION, MISSING_IMAGE, PROBLEMS, UNREADABLE_IMAGE, BadSample, Sample
from vlmsam.engine.contract import MAX_REQUEST_CHARS, check_request
from vlmsam.errors import ImageLoadError, PromptError, VlmsamError
from vlmsam.io.images import load_image
from vlmsam.io.text import clean_text

#: A training turn longer than this is a bad sample (a request is at most MAX_REQUEST_CHARS; a turn
#: adds a template to it, and VQA answers are longer).
MAX_TURN_CHARS = 8 * MAX_REQUEST_CHARS
ON_BAD_SAMPLE = ("skip", "error")


def check_image(path, cache: dict | None = None) -> tuple[Image.Image | None, tuple[int, int]]:
    """The decoded image at ``path`` and its ``(width, height)`` (a BadSample if it is missing or
    unusable). With ``cache`` (path -> its size or its BadSample), an image seen before is not decoded
    again: the image returned is then None."""
    if cache is not None and path in cache:
        if isinstance(cache[path], BadSample):
            raise cache[path]
        return None, cache[path]
    try:
        if isinstance(path, (str, Path)) and not Path(path).exists():
            raise BadSample(path, "not found", MISSING_IMAGE)
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            raise BadSample(path, f"not a readable image ({_without_path(str(exc), path)})", UNREADABLE_IMAGE) from None
    except BadSample as exc:
        if cache is not None:
            cache[path] = exc
        raise
    if cache is not None:
        cache[path] = image.size
    return image, image.size


def _without_path(message: str, path) -> str:
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def check_texts(sample: Sample, where) -> None:
    """Every request (``meta["queries"]`` of an evaluation sample) passes ``check_request``; every
    turn is clean text of at most MAX_TURN_CHARS characters, and no user turn is empty."""
    for k, query in enumerate(sample.meta.get("queries") or []):
        try:
            check_request(query)
        except PromptError as exc:
            raise BadSample(where, f"request {k}: {str(exc).replace('the request', 'the text')}") from None
    for c, conversation in enumerate(sample.conversations):
        for t, (user, answer) in enumerate(conversation):
            for role, text in (("question", user), ("answer", answer)):
                if text is None and role == "answer":
                    continue
                try:
                    clean_text(text, f"the {role}", MAX_TURN_CHARS)
                except PromptError as exc:
                    raise BadSample(where, f"conversation {c} turn {t}: {exc}") from None
                if role == "question" and not text.strip():
                    raise BadSample(where, f"conversation {c} turn {t}: the question is empty")


def load_checked(ds: SegDataset, i: int, rng: random.Random | None = None, *,
                 images: dict | None = None) -> tuple[Sample, Image.Image | None]:
    """Sample ``i`` of ``ds`` and its decoded image, every check passed: the evaluation form
    (``load_eval``) when ``rng`` is None, else the training form (``load(i, rng)``).

    ``images`` (path -> size or BadSample) lets a caller that only checks skip decoding an image
    twice; the image returned is then None for an image already seen."""
    image, (width, height) = check_image(ds.image_path(i), images)
    where = ds.annotation_path(i) or ds.image_path(i)
    try:
        sample = ds.load_eval(i) if rng is None else ds.load(i, rng)
    except BadSample:
        raise
    except VlmsamError as exc:  # a loader's user error about this one sample
        raise BadSample(where, str(exc)) from None
    check_texts(sample, where)
    if sample.masks.shape[1:] != (height, width):
        raise BadSample(sample.where, f"masks are {sample.masks.shape[2]}x{sample.masks.shape[1]} "
                                      f"but the image is {width}x{height}")
    return sample, image


class SkippedSamples:
    """Bad samples met by one command: counted by kind, each path with its reason (first kept)."""

    def __init__(self, policy: str = "skip"):
        if policy not in ON_BAD_SAMPLE:
            raise VlmsamError(f"--on-bad-sample {policy!r}: choose skip or error")
        self.policy = policy
        self.by_kind: Counter = Counter()
        self.paths: dict[str, str] = {}

    def add(self, exc: BadSample) -> None:
        """Count ``exc``, or raise it under the ``error`` policy."""
        if self.policy == "error":
            raise exc
        self.by_kind[exc.kind if exc.kind in PROBLEMS else BROKEN_ANNOTATION] += 1
        self.paths.setdefault(exc.path, exc.reason)

    def merge(self, other: dict) -> None:
        """Add the counts and paths of another rank's :meth:`as_dict` ``(counts, paths)``."""
        self.by_kind.update(other["counts"])
        for path, reason in other["paths"].items():
            self.paths.setdefault(path, reason)

    def __len__(self) -> int:
        return sum(self.by_kind.values())

    def as_dict(self) -> dict:
        return {"counts": dict(self.by_kind), "paths": dict(self.paths)}

    def metrics(self) -> dict:
        """What goes into ``metrics.json``: ``{"count": N, "by_reason": {kind: n}}``."""
        return {"count": len(self), "by_reason": {k: self.by_kind[k] for k in PROBLEMS if self.by_kind[k]}}

    def summary(self, limit: int = 5) -> str:
        if not len(self):
            return "bad samples: none"
        kinds = ", ".join(f"{n} {k}" for k, n in ((k, self.by_kind[k]) for k in PROBLEMS) if n)
        shown = "; ".join(f"{p}: {r}" for p, r in list(self.paths.items())[:limit])
        more = f"; ... and {len(self.paths) - limit} more" if len(self.paths) > limit else ""
        return f"bad samples skipped: {len(self)} ({kinds}): {shown}{more}"
