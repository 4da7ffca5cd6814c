"""Reading a dataset's own files (annotations, class lists, indexes) through the bounded readers of
:mod:`vlmsam.io.files`: regular files only, capped in size, JSON nested at most 64 deep, no NaN and no
lone surrogates. A file that cannot be used is a :class:`~vlmsam.data.sample.BadSample` naming it, or
the caller's error type (``DatasetError`` for a file the whole dataset depends on).
"""

from __future__ import annotations

from pathlib import Path

from vlmsam.data.sample import BadSample
from vlmsam.errors import VlmsamError
from vlmsam.io.files import json_type, loads, read_user_bytes


def _reason(exc: Exception, path: Path) -> str:
    """The reason of an error from :mod:`vlmsam.io.files`, without its leading path."""
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def read_dataset_text(path: str | Path, what: str, *, cp1252: bool = False, error=BadSample) -> str:
    """The text of ``path`` (UTF-8, a BOM allowed; cp1252 where it is not UTF-8 and ``cp1252``: a few
    released ReasonSeg files are). ``error(path, reason)`` is raised for anything unusable."""
    path = Path(path)
    try:
        raw = read_user_bytes(path, what)
    except VlmsamError as exc:
        raise _error(error, path, _reason(exc, path)) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if not cp1252:
            raise _error(error, path, f"not UTF-8 text (bad byte at {exc.start}); expected {what}") from None
    try:
        return raw.decode("cp1252")
    except UnicodeDecodeError as exc:
        raise _error(error, path, f"neither UTF-8 nor cp1252 text (bad byte at {exc.start}); expected {what}") from None


def read_dataset_json(path: str | Path, what: str, kind: type | tuple[type, ...] | None = None, *,
                      cp1252: bool = False, error=BadSample):
    """The JSON value in ``path`` (of Python type ``kind`` when given), read with the bounded
    :func:`vlmsam.io.files.loads`; ``error(path, reason)`` names the file otherwise."""
    path = Path(path)
    text = read_dataset_text(path, what, cp1252=cp1252, error=error)
    if not text.strip():
        raise _error(error, path, f"empty; expected {what}")
    try:
        value = loads(text)
    except ValueError as exc:
        raise _error(error, path, f"not valid JSON ({exc}); expected {what}") from None
    if kind is not None and not isinstance(value, kind):
        raise _error(error, path, f"a JSON {json_type(value)}; expected {what}")
    return value


def _error(error, path: Path, reason: str) -> Exception:
    """``error(path, reason)`` for a BadSample type, else ``error("path: reason")``."""
    return error(path, reason) if issubclass(error, BadSample) else error(f"{path}: {reason}")
