"""Errors a user can fix. The CLI prints their message on one line and exits with code 2.

Everything else is a bug in vlmsam and keeps its traceback.
"""


class VlmsamError(Exception):
    """Base class of every error caused by input the user gave (files, arguments, checkpoints)."""


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
