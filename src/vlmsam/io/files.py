"""Reading the files and JSON a user hands us: one checked path, so a special file, a huge or empty
file, binary or non-UTF-8 text, JSON nested too deep, or a wrongly typed document is one line naming
the file and what was expected, never a traceback or a hang.

- :func:`read_user_bytes` reads regular files only (a FIFO, socket, device or ``/proc`` entry is
  refused from its ``fstat`` before a byte is read, and the open never blocks), up to a byte cap.
- :func:`loads` is ``json.loads`` with a size and depth limit that refuses NaN / Infinity and numbers
  that overflow to inf (Python's json accepts them); every JSON a user or client sends goes through it.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
from pathlib import Path

from vlmsam.errors import VlmsamError

#: Files a user names are read whole; more than this is refused (override: VLMSAM_MAX_FILE_BYTES).
DEFAULT_MAX_FILE_BYTES = 512 * 2**20
#: JSON nested deeper than this is refused: no dataset, request or prediction file needs more.
MAX_JSON_DEPTH = 64


def _max_file_bytes() -> int:
    from vlmsam.errors import env_int

    return env_int("VLMSAM_MAX_FILE_BYTES", DEFAULT_MAX_FILE_BYTES, lo=1)


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENAMETOOLONG:
        return "the file name is too long"
    if exc.errno == errno.ENOENT:
        return "no such file"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENXIO:
        return "not a regular file (a socket or device)"
    if exc.errno == errno.ELOOP:
        return "a loop of symbolic links"
    return exc.strerror or type(exc).__name__


def read_user_bytes(path: str | os.PathLike, what: str, max_bytes: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` (links followed), at most ``max_bytes`` of them.

    ``what`` says what the file should be, for the error. The file is opened non-blocking so that a
    FIFO with no writer cannot hang us; its type is checked on the open descriptor (no race).
    """
    limit = _max_file_bytes() if max_bytes is None else max_bytes
    name = str(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except IsADirectoryError:
        raise VlmsamError(f"{name}: is a directory; expected {what}") from None
    except OSError as exc:
        raise VlmsamError(f"{_short(name)}: {_why(exc)}; expected {what}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise VlmsamError(f"{name}: is a directory; expected {what}")
        if not stat.S_ISREG(info.st_mode):
            raise VlmsamError(f"{name}: not a regular file (a FIFO, socket or device); expected {what}")
        if info.st_size > limit:
            raise VlmsamError(f"{name}: {info.st_size:,} bytes, over the {limit:,}-byte limit; expected {what}")
        chunks, total = [], 0
        while True:  # /proc files report size 0: read to the end, still capped
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise VlmsamError(f"{name}: over the {limit:,}-byte limit; expected {what}")
        return b"".join(chunks)
    except OSError as exc:
        raise VlmsamError(f"{name}: cannot be read ({_why(exc)}); expected {what}") from None
    finally:
        os.close(fd)


def _short(name: str) -> str:
    return name if len(name) <= 120 else name[:60] + "..." + name[-40:]


def read_text(path: str | Path, what: str, max_bytes: int | None = None) -> str:
    """The UTF-8 text of ``path``; ``what`` says what the file should be, for the error."""
    data = read_user_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VlmsamError(f"{path}: not UTF-8 text (bad byte at {exc.start}); expected {what}") from None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def json_depth_over(text: str | bytes, limit: int) -> bool:
    """Whether brackets in ``text`` nest deeper than ``limit`` (strings skipped); linear, no recursion."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if text.count("[") + text.count("{") <= limit:
        return False
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def loads(text: str | bytes, *, max_depth: int = MAX_JSON_DEPTH, max_chars: int | None = None):
    """``json.loads`` that refuses NaN, Infinity, numbers too large for a float, lone surrogates in
    strings, documents nested deeper than ``max_depth`` and (when given) longer than ``max_chars``.
    Raises ``ValueError`` with the reason."""
    if max_chars is not None and len(text) > max_chars:
        raise ValueError(f"the document has {len(text):,} characters; at most {max_chars:,} are accepted")
    if json_depth_over(text, max_depth):
        raise ValueError(f"nested deeper than {max_depth} levels")
    try:
        value = json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    _check_strings(value)
    return value


def _check_strings(value) -> None:
    """Refuse strings that are not valid Unicode (a lone surrogate from "\\udcff"), iteratively."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError("a string holds a lone surrogate (not valid Unicode text)") from None
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


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
