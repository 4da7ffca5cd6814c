"""Errors a user can fix. The CLI prints their message on one line and exits with code 2.

Everything else is a bug in vlmsam and keeps its traceback.
"""


class VlmsamError(Exception):
    """Base class of every error caused by input the user gave (files, arguments, checkpoints)."""

    http_status = 422  # what `vlmsam serve` answers: the request (or the server's setup) is at fault


class ImageLoadError(VlmsamError):
    """An image path or URL that cannot be read as an image."""


class CheckpointError(VlmsamError):
    """A model file or directory that is missing, unsafe, or not the kind of model asked for."""


class PromptError(VlmsamError):
    """Boxes, points or masks given as prompts that cannot be used."""


class DatasetError(VlmsamError):
    """A dataset folder, file or name that cannot be used as given."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def env_int(name: str, default: int, lo: int = 0, hi: int = 2 ** 63 - 1) -> int:
    """An integer environment variable, checked where it is read: a value that is not a whole number
    in ``[lo, hi]`` is one line naming the variable (a VlmsamError), not a ValueError deep inside."""
    import os

    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = int(text.strip())
    except ValueError:
        raise VlmsamError(f"environment variable {name}={text!r} must be a whole number; unset it or fix it") from None
    if not lo <= value <= hi:
        raise VlmsamError(f"environment variable {name}={value} must be from {lo} to {hi}; unset it or fix it")
    return value
