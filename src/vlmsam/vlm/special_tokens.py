"""User text never becomes a special token of the VLM.

A request (or an earlier turn of a conversation) that spells ``<|image_pad|>``, ``<|im_end|>`` or
``[SEG]`` must reach the model as those characters, not as the tokens: a forged ``<|image_pad|>`` asks
the model to place image features where there are none, a forged ``<|im_end|>`` ends the user's turn
early, a forged ``[SEG]`` in a replayed answer asks SAM for a mask nobody requested.
:func:`escape_special_tokens` breaks every such spelling with a ZERO WIDTH SPACE after its first
character, so no tokenizer can match it: the local processor's (which also tokenizes user text with
``split_special_tokens=True``) and a remote server's chat template alike. Templates we write
ourselves are not escaped; only the text a user or client hands in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

ZWSP = "\u200b"
#: The Qwen-VL family's control tokens, for a VLM whose tokenizer is not here (a remote server).
QWEN_VL_SPECIAL = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
)
#: Tokens the designs add to a VLM's vocabulary.
DESIGN_TOKENS = ("[SEG]",)


def special_strings(tokenizer=None, extra: Iterable[str] = DESIGN_TOKENS) -> tuple[str, ...]:
    """Every spelling that ``tokenizer`` turns into a special token (its ``all_special_tokens`` and
    the added tokens marked special), plus the Qwen-VL family's and the designs' own, longest first.

    Spellings of one character cannot be broken and are left out (no Qwen-VL token is one)."""
    found = set(QWEN_VL_SPECIAL) | set(extra)
    if tokenizer is not None:
        found |= {str(t) for t in getattr(tokenizer, "all_special_tokens", [])}
        decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        found |= {str(getattr(t, "content", t)) for t in decoder.values() if getattr(t, "special", False)}
    return tuple(sorted((s for s in found if len(s) > 1 and ZWSP not in s), key=lambda s: (-len(s), s)))


def escape_special_tokens(text: str, tokenizer=None, *, strings: Sequence[str] | None = None) -> str:
    """``text`` with every special-token spelling of ``tokenizer`` (see :func:`special_strings`;
    or ``strings``, precomputed) broken by a ZERO WIDTH SPACE after its first character.

    Text without such a spelling is returned unchanged. Breaking one spelling can never form another
    (none contains the zero-width space), so one pass per spelling leaves none behind."""
    if not text:
        return text
    for s in strings if strings is not None else special_strings(tokenizer):
        if s in text:
            text = text.replace(s, s[0] + ZWSP + s[1:])
    return text


def escape_turns(turns: Sequence[tuple[str, str | None]], tokenizer=None) -> list[tuple[str, str | None]]:
    """``[(user, answer), ...]`` with both sides escaped: every turn a design puts into a prompt holds
    the user's request or an earlier exchange a client sent back (a replayed answer with ``[SEG]`` in it
    must not ask for a mask)."""
    strings = special_strings(tokenizer)
    return [(escape_special_tokens(user, strings=strings),
             None if answer is None else escape_special_tokens(answer, strings=strings)) for user, answer in turns]
