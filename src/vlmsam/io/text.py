"""One sanitiser for the text a user or client hands us (requests, prompts, names, ids).

Text must be valid Unicode (no lone surrogates: ``"\\udcff"`` from JSON, ``\\xff`` bytes from a shell
decoded with ``surrogateescape``) and hold no control characters but tab and newline; otherwise it is
a :class:`~vlmsam.errors.PromptError` that says what is wrong. Special tokens of a VLM in user text are
neutralised where the prompt is built (``vlm.processor.escape_special_tokens``), not here: which
strings are special depends on the model.
"""

from __future__ import annotations

import unicodedata

from vlmsam.errors import PromptError

_ALLOWED_CONTROLS = {"\t", "\n", "\r"}


def clean_text(text, what: str = "the request", max_chars: int | None = None) -> str:
    """``text`` checked: a string of valid Unicode, no control characters, at most ``max_chars``."""
    if not isinstance(text, str):
        raise PromptError(f"{what} must be text, not {type(text).__name__}")
    if max_chars is not None and len(text) > max_chars:
        raise PromptError(f"{what} has {len(text):,} characters; at most {max_chars:,} are accepted")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PromptError(f"{what} is not valid text (an undecodable character at position {exc.start}); "
                              "send UTF-8") from None
    for k, ch in enumerate(text):
        if ch not in _ALLOWED_CONTROLS and (ch < " " or "\x7f" <= ch <= "\x9f"):
            raise PromptError(f"{what} holds a control character (U+{ord(ch):04X} at position {k})")
    return unicodedata.normalize("NFC", text)
