"""The published inference of the RL-trained grounding models, as their evaluation scripts run it.

Seg-Zero (``seg_zero``: Ricky06662/Seg-Zero-7B, one object, a box and two points) and VisionReasoner
(``vision_reasoner``: Ricky06662/VisionReasoner-7B, a list of objects, a box and a point each) are
defined by dvlab-research/Seg-Zero (``evaluation_scripts/evaluation.py`` at 77f9ea5 and
``evaluation_visionreasoner.py`` at 42a3345) and dvlab-research/VisionReasoner. Both:

* resize the image to 840 x 840 with PIL bilinear (aspect ratio not kept) before the processor, while
  SAM 2 sees the original image;
* ask one user turn, the image then their template, the request lower-cased and stripped of a final
  ``.`` (VisionReasoner also ``"?!``); the template's sentences are joined with no space, as published;
* decode greedily (``max_new_tokens=1024``) and read the answer's coordinates in the 840 frame,
  scaled back by ``original / 840``: Seg-Zero ``round(int(v) * f)``, VisionReasoner ``int(v * f + 0.5)``;
* prompt SAM 2 once per object with its box and its point(s), all positive, three candidate masks, the
  best-scored kept; the objects' masks are joined by OR.

Where the published parse fails (no JSON, a missing key, a non-number) it counts the sample as no mask;
so does this one, with the reason. One deliberate difference: Seg-Zero's script also fails when the
answer has no ``<think>`` (its ``think_text`` is then unbound); here such an answer keeps its mask.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

from vlmsam.grounding.parse import Grounding

RESIZE = 840  # `resize_size = 840` in both scripts
MAX_NEW_TOKENS = 1024

SEG_ZERO_TEMPLATE = (
    "Please find '{Question}' with bbox and points."
    "Compare the difference between objects and find the most closely matched one."
    "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
    "Output the one bbox and points of two largest inscribed circles inside the interested object in JSON format."
    "i.e., <think> thinking process here </think>"
    "<answer>{Answer}</answer>"
)
SEG_ZERO_EXAMPLE = "{'bbox': [10,100,200,210], 'points_1': [30,110], 'points_2': [35,180]}"
VISION_REASONER_TEMPLATE = (
    "Please find \"{Question}\" with bboxs and points."
    "Compare the difference between object(s) and find the most closely matched object(s)."
    "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
    "Output the bbox(es) and point(s) inside the interested object(s) in JSON format."
    "i.e., <think> thinking process here </think>"
    "<answer>{Answer}</answer>"
)
VISION_REASONER_EXAMPLE = ('[{"bbox_2d": [10,100,200,210], "point_2d": [30,110]}, '
                           '{"bbox_2d": [225,296,706,786], "point_2d": [302,410]}]')


@dataclass(frozen=True)
class Recipe:
    """One published pipeline: its template, how the request is normalised, its parse."""

    name: str
    template: str
    example: str
    strip: str

    def prompt(self, request: str) -> str:
        return self.template.format(Question=request.lower().strip(self.strip), Answer=self.example)


RECIPES = {
    "seg_zero": Recipe("seg_zero", SEG_ZERO_TEMPLATE, SEG_ZERO_EXAMPLE, "."),
    "vision_reasoner": Recipe("vision_reasoner", VISION_REASONER_TEMPLATE, VISION_REASONER_EXAMPLE, ".\"?!"),
}


def vlm_image(image):
    """The image as the published scripts give it to the VLM: 840 x 840, PIL bilinear."""
    from PIL import Image

    return image.resize((RESIZE, RESIZE), Image.BILINEAR)


def parse_published(style: str, text: str, image_size: tuple[int, int]) -> Grounding:
    """Objects of an answer in original-image pixels (``image_size`` is ``(width, height)``), rounded as
    the published script rounds them; an answer it could not use gives no object and the reason."""
    fx, fy = image_size[0] / RESIZE, image_size[1] / RESIZE
    try:
        if style == "seg_zero":
            boxes, points = _seg_zero(text, fx, fy)
        elif style == "vision_reasoner":
            boxes, points = _vision_reasoner(text, fx, fy)
        else:
            raise ValueError(f"unknown published style {style!r}; choose from {', '.join(RECIPES)}")
    except _Unusable as e:
        return Grounding(reason=str(e))
    if not boxes:
        return Grounding(reason="no object in the answer")
    return Grounding(np.array(boxes, np.float32).reshape(-1, 4), [np.array(p, np.float32).reshape(-1, 2) for p in points],
                     [""] * len(boxes))


class _Unusable(Exception):
    pass


def _seg_zero(text: str, fx: float, fy: float):
    """Seg-Zero: the first ``{...}``; its first key with 'bbox' (four numbers) and its first two keys with
    'points' (two numbers each), each value truncated by int() and then rounded to even."""
    match = re.search(r"{[^}]+}", text)
    if not match:
        raise _Unusable("no JSON object in the answer")
    try:
        data = json.loads(match.group(0))
        bbox_key = next((k for k in data.keys() if "bbox" in k.lower()), None)
        if not bbox_key or len(data[bbox_key]) != 4:
            raise _Unusable("no 'bbox' of four numbers")
        b = data[bbox_key]
        box = [round(int(b[0]) * fx), round(int(b[1]) * fy), round(int(b[2]) * fx), round(int(b[3]) * fy)]
        keys = [k for k in data.keys() if "points" in k.lower()][:2]
        if len(keys) != 2:
            raise _Unusable("not two 'points' keys")
        points = [[round(int(data[k][0]) * fx), round(int(data[k][1]) * fy)] for k in keys]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError) as e:
        raise _Unusable(f"unusable answer ({type(e).__name__})") from None
    return [box], [points]


def _vision_reasoner(text: str, fx: float, fy: float):
    """VisionReasoner: the JSON list inside ``<answer>``, every item's ``bbox_2d`` and ``point_2d``."""
    match = re.search(r"<answer>\s*(.*?)\s*</answer>", text, re.DOTALL)
    if not match:
        raise _Unusable("no <answer>...</answer> in the answer")
    try:
        data = json.loads(match.group(1))
        boxes = [[int(item["bbox_2d"][0] * fx + 0.5), int(item["bbox_2d"][1] * fy + 0.5),
                  int(item["bbox_2d"][2] * fx + 0.5), int(item["bbox_2d"][3] * fy + 0.5)] for item in data]
        points = [[[int(item["point_2d"][0] * fx + 0.5), int(item["point_2d"][1] * fy + 0.5)]] for item in data]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError) as e:
        raise _Unusable(f"unusable answer ({type(e).__name__})") from None
    return boxes, points
