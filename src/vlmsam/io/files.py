"""Reading the text and JSON files a user hands us: one checked path, so an empty, binary, non-UTF-8,
truncated or wrongly typed file is one line naming the file and what was expected, never a traceback;
JSON's NaN / Infinity (which Python's json accepts) and numbers that overflow to inf are refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

from vlmsam.errors import VlmsamError


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of ``path``; ``what`` says what the file should be, for the error."""
    path = Path(path)
    if path.is_dir():
        raise VlmsamError(f"{path}: is a directory; expected {what}")
    if not path.is_file():
        raise VlmsamError(f"{path}: no such file; expected {what}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise VlmsamError(f"{path}: not UTF-8 text (bad byte at {exc.start}); expected {what}") from None
    except OSError as exc:
        raise VlmsamError(f"{path}: cannot be read ({exc.strerror}); expected {what}") from None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def loads(text: str):
    """``json.loads`` that refuses NaN, Infinity and numbers too large for a float."""
    return json.loads(text, parse_float=_finite, parse_constant=_no_constant)


def read_json(path: str | Path, what: str, kind: type | tuple[type, ...] | None = None):
    """The JSON value in ``path``, of Python type ``kind`` when given (``dict``, ``list``)."""
    text = read_text(path, what)
    if not text.strip():
        raise VlmsamError(f"{path}: empty; expected {what}")
    try:
        data = loads(text)
    except ValueError as exc:
        raise VlmsamError(f"{path}: not valid JSON ({exc}); expected {what}") from None
    if kind is not None and not isinstance(data, kind):
        raise VlmsamError(f"{path}: a JSON {json_type(data)}; expected {what}")
    return data


def json_type(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")
