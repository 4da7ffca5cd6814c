"""LLaVA-Plus tool-use conversations -> our conversation format with ``<gsam>`` answers.

LLaVA-Plus (``llava-plus-v1-117k-tool-merge.json``) teaches a VLM to call tools: a ``gpt`` turn carries
``"actions": [{"API_name": "grounding_dino+sam", "API_params": {"caption": "dog"}}]``, the next
``human`` turn returns the tool's output and asks for a summary. The Qwen-VL + SAM seed keeps the
question and turns the call into a tag the model answers with, ``<gsam>dog</gsam>``, which the ``gsam``
segmenter acts on. Each kept entry becomes ``{"image": PATH, "conversations": [{"role": "user",
"content": ...}, {"role": "assistant", "content": "<gsam>dog</gsam>"}]}``: what ``vlmsam train`` reads as
VQA data. Entries without a segmentation or detection call are left out and counted.
"""

from __future__ import annotations

from pathlib import Path

from vlmsam.data import prompts

# LLaVA-Plus API names whose caption is a phrase to find and segment.
SEGMENTING_TOOLS = ("grounding_dino+sam", "grounding_dino", "sam", "semantic-sam", "seem", "grounding_dino+sam+inpainting")


def tool_caption(turn: dict) -> str | None:
    for action in turn.get("actions") or []:
        if not isinstance(action, dict):
            continue
        params = action.get("API_params") or {}
        if str(action.get("API_name", "")).lower() in SEGMENTING_TOOLS and isinstance(params, dict):
            caption = params.get("caption") or params.get("text")
            if isinstance(caption, str) and caption.strip():
                return caption.strip()
    return None


def convert_llava_plus(entries: list, image_root: str | Path) -> tuple[list[dict], dict[str, int]]:
    """``(converted entries, counts of what was left out and why)``."""
    out, skipped = [], {"no image": 0, "no segmentation call": 0, "malformed": 0}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("conversations"), list):
            skipped["malformed"] += 1
            continue
        if not entry.get("image"):
            skipped["no image"] += 1
            continue
        turns = entry["conversations"]
        kept = []
        for k in range(len(turns) - 1):
            human, gpt = turns[k], turns[k + 1]
            if not (isinstance(human, dict) and isinstance(gpt, dict)) or human.get("from") != "human" or gpt.get("from") != "gpt":
                continue
            caption = tool_caption(gpt)
            if caption is not None:
                question = prompts.strip_image_placeholder(str(human.get("value", "")))
                kept = [{"role": "user", "content": question}, {"role": "assistant", "content": f"<gsam>{caption}</gsam>"}]
                break
        if not kept:
            skipped["no segmentation call"] += 1
            continue
        out.append({"id": entry.get("id"), "image": str(Path(image_root) / entry["image"]), "conversations": kept})
    return out, skipped
