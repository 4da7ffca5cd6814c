"""Teacher traces from a synthetic scene's annotations: what a VLM that knew the answer would say to SAM 3.

The teacher is a stand-in VLM inside the *real* loop (:class:`~vlmsam.agent.loop.AgentLoop`): it reads the
scene's targets, names the most specific phrase that covers them, looks at what SAM 3 actually returned
(each target matched to a candidate at mask IoU >= 0.5) and selects those numbers; when SAM 3 missed, it
tries ever more general phrases (down to "shapes"), then reports no mask. A "none" request is looked up with its own phrase
and answered with report_no_mask. Every call is recorded with the context it was made in, so a model
is taught each reply exactly where the loop will ask for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlmsam.agent.loop import AgentLoop
from vlmsam.data.phrases import plural
from vlmsam.data.synth import absent_named, visible_masks
from vlmsam.metrics.iou import mask_iou
from vlmsam.vlm.messages import Message

TINY_SYSTEM_PROMPT = ("Answer the request with the tools segment_phrase, select_masks_and_return and report_no_mask. "
                      'Reply <think>...</think><tool>{"name": ..., "parameters": ...}</tool>.')
MATCH_IOU = 0.5


def tool(name: str, why: str, **parameters) -> str:
    return f"<think>{why}</think><tool>{json.dumps({'name': name, 'parameters': parameters})}</tool>"


def phrases_for_targets(scene: list[dict], targets: list[int]) -> list[str]:
    """The phrase that names exactly the targets where one does (colour and shape, shape, colour), else the
    most specific that covers them; then the more general ones to fall back on."""
    picked = [scene[k] for k in targets]
    many = len(targets) > 1
    colors, shapes = {s["color"] for s in picked}, {s["shape"] for s in picked}
    options = []
    if len(colors) == 1 and len(shapes) == 1:
        options.append(((next(iter(colors)), next(iter(shapes)))))
    if len(shapes) == 1:
        options.append((None, next(iter(shapes))))
    if len(colors) == 1:
        options.append((next(iter(colors)), None))
    options.append((None, None))

    def covers(color, shape):
        return sorted(k for k, s in enumerate(scene) if color in (None, s["color"]) and shape in (None, s["shape"]))

    def text(color, shape):
        noun = (plural(shape) if many else shape) if shape else "shapes"
        return f"{color} {noun}" if color else noun

    exact = [o for o in options if covers(*o) == sorted(targets)]
    first = exact[0] if exact else options[0]
    return list(dict.fromkeys(text(*o) for o in options[options.index(first):]))


def match(candidates: np.ndarray, truth: np.ndarray) -> list[int]:
    """1-based numbers of the candidates that match a target (each target its best, at IoU >= 0.5)."""
    chosen = set()
    for t in truth:
        iou = mask_iou(torch.from_numpy(candidates), torch.from_numpy(t))
        if len(iou) and iou.max() >= MATCH_IOU:
            chosen.add(int(iou.argmax()) + 1)
    return sorted(chosen)


class Teacher:
    """A conversation (the loop's ``talk``) that answers from the annotations and records every call."""

    def __init__(self, phrases: list[str], truth: np.ndarray, absent: bool):
        self.phrases, self.truth, self.absent = phrases, truth, absent
        self.loop: AgentLoop | None = None
        self.calls: list[tuple[list[Message], str]] = []

    def reply(self, messages, *, max_new_tokens=0, thread="main") -> str:
        answer = self._answer()
        self.calls.append((list(messages), answer))
        return answer

    def _answer(self) -> str:
        loop = self.loop
        tried = loop.phrases
        if not tried:
            return tool("segment_phrase", f"look for {self.phrases[0]}", text_prompt=self.phrases[0])
        chosen = [] if self.absent or not len(loop.masks) else match(loop.masks, self.truth)
        if chosen:
            return tool("select_masks_and_return", f"{len(chosen)} of {len(loop.masks)} match",
                        final_answer_masks=chosen)
        if not self.absent and len(tried) < len(self.phrases):
            nxt = self.phrases[len(tried)]
            return tool("segment_phrase", f"none match, try {nxt}", text_prompt=nxt)
        return tool("report_no_mask", "nothing matches")


@dataclass
class Trace:
    """One request's teacher trace: every call's context and reply, how the loop ended, the masks it chose
    and the scene's target masks."""

    name: str
    kind: str
    calls: list[tuple[list[Message], str]]
    reason: str
    turns: int
    masks: np.ndarray
    truth: np.ndarray


def scene_trace(json_path: Path, sam, *, score_threshold: float, system_prompt: str = TINY_SYSTEM_PROMPT) -> Trace:
    """The teacher's trace for one synthetic scene (its ``.json`` beside its ``.jpg``)."""
    anno = json.loads(Path(json_path).read_text())
    image = Image.open(Path(json_path).with_suffix(".jpg")).convert("RGB")
    scene, n = anno["scene"], len(anno["shapes"])
    targets = list(range(len(scene) - n, len(scene)))  # painted last, in answer order (data/synth.py)
    absent = anno["kind"] == "none"
    if absent:
        phrases = [absent_named(anno.get("answer", "")) or "shape"]
    else:
        phrases = phrases_for_targets(scene, targets)
    truth = visible_masks(scene, image.height, image.width)[targets] if targets else np.zeros((0, image.height, image.width), bool)
    teacher = Teacher(phrases, truth, absent)
    loop = AgentLoop(teacher, sam, sam.encode(image), image, anno["text"][0], max_turns=6, score_threshold=score_threshold,
                     system_prompt=system_prompt)
    teacher.loop = loop
    outcome = loop.run()
    return Trace(Path(json_path).stem, anno["kind"], teacher.calls, outcome.reason, outcome.turns, outcome.masks, truth)
