"""SAM-R1's reward input: the IoU of the mask SAM draws from a completion's prompts with the true mask.

The prompts are read as the box_prompt segmenter reads them (the style's parse, original-image pixels) and
drawn as the bundle draws them (``model.prompt``: box and point, or the point alone; the best of three
candidates or one). SAM encodes each image once: the G completions of a group, and the later steps that
meet the same image, reuse its embedding (a small cache keyed by the image's path).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from vlmsam.grounding import parse_grounding, published
from vlmsam.grounding.rewards import mask_iou
from vlmsam.io.images import load_image


class MaskScorer:
    def __init__(self, sam: str, style: str, *, prompt: str = "box+point", multimask: bool = True, cache: int = 64):
        from vlmsam.sam import load_sam_backend

        self.sam, self.style, self.prompt, self.multimask = load_sam_backend(sam), style, prompt, multimask
        self.embeddings: OrderedDict = OrderedDict()
        self.cache, self.encoder_calls = cache, 0

    def embedding(self, key: str):
        if key not in self.embeddings:
            self.embeddings[key] = self.sam.encode(load_image(key))
            self.encoder_calls += 1
            while len(self.embeddings) > self.cache:
                self.embeddings.popitem(last=False)
        self.embeddings.move_to_end(key)
        return self.embeddings[key]

    def __call__(self, text: str, row: dict) -> float:
        target = np.asarray(row["target"], bool)
        h, w = target.shape
        if self.style in published.RECIPES:
            g = published.parse_published(self.style, text, (w, h))
        else:
            g = parse_grounding(text, (w, h), tuple(row["frame"]), self.style)
        if not len(g):
            return mask_iou(np.zeros_like(target), target)
        emb = self.embedding(row["image_key"])
        drawn = np.zeros_like(target)
        for k, points in enumerate(g.points):
            pts = points[None] if len(points) else None
            box = None if (self.prompt == "point" and pts is not None) else g.boxes[k:k + 1]
            pred = self.sam.predict(emb, boxes=box, points=pts, multimask_output=self.multimask)
            pred = pred.best() if self.multimask else pred
            drawn |= pred.masks[0, 0].cpu().numpy()
        return mask_iou(drawn, target)
