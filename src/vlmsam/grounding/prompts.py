"""How each grounding convention asks a VLM to locate a request (used by the box_prompt segmenter and by
the training data of its offline default, so that both ask in the same words)."""

from __future__ import annotations

from vlmsam.grounding.published import RECIPES

JSON_TAIL = "output the bbox_2d and point_2d of each match in JSON format."
STYLES = ("qwen2_5_vl", "qwen3_vl", "qwen_vl", *RECIPES)


def grounding_prompt(request: str, is_sentence: bool = False, style: str = "qwen2_5_vl") -> str:
    """The request to a VLM: locate what ``request`` names (a phrase) or answers (a sentence).
    ``seg_zero`` and ``vision_reasoner`` use their published template, character for character."""
    if style in RECIPES:
        return RECIPES[style].prompt(request)
    request = request.strip()
    if style == "qwen_vl":  # Qwen-VL answers <ref>...</ref><box>(x1,y1),(x2,y2)</box> on a 0-1000 grid
        return f"{request} Frame it with <ref> and <box>." if is_sentence else f"Frame the {request} in the image."
    if style not in STYLES:
        raise ValueError(f"unknown grounding prompt style {style!r}; choose from {', '.join(STYLES)}")
    if is_sentence:
        return f"{request} Locate the answer in this image and {JSON_TAIL}"
    return f"Locate {request} in this image and {JSON_TAIL}"
