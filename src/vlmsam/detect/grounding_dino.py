"""Grounding DINO (transformers' ``GroundingDinoForObjectDetection``) as a small adapter: a phrase in,
boxes out, XYXY in original-image pixels, with the published box / text thresholds (0.3 / 0.25)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vlmsam.errors import CheckpointError, first_line

BOX_THRESHOLD = 0.3
TEXT_THRESHOLD = 0.25


@dataclass
class Detections:
    """``boxes (N, 4) float32`` XYXY original pixels, ``scores (N,)``, ``labels`` (the phrase words matched)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: list[str]


def detector_text(phrase: str) -> str:
    """Grounding DINO's input text: lower case, ending with a period (how it was trained)."""
    text = phrase.strip().lower()
    return text if text.endswith(".") else text + "."


class GroundingDino:
    def __init__(self, model, processor):
        self.model = model.eval()
        self.processor = processor

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device=None, dtype=None) -> GroundingDino:
        from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor

        from vlmsam.hub import check_available

        check_available(str(name_or_path), "detector")
        try:
            processor = GroundingDinoProcessor.from_pretrained(str(name_or_path))
            model = GroundingDinoForObjectDetection.from_pretrained(str(name_or_path), **({"dtype": dtype} if dtype else {}))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{name_or_path}: not a Grounding DINO model ({first_line(exc)})") from None
        if device is not None:
            model.to(device)
        return cls(model, processor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def detect(self, image, phrase: str, *, box_threshold: float = BOX_THRESHOLD,
               text_threshold: float = TEXT_THRESHOLD) -> Detections:
        """Boxes of ``phrase`` in ``image`` (a PIL image), best first."""
        inputs = self.processor(images=image, text=detector_text(phrase), return_tensors="pt").to(self.device)
        out = self.model(**inputs)
        result = self.processor.post_process_grounded_object_detection(
            out, inputs["input_ids"], threshold=box_threshold, text_threshold=text_threshold,
            target_sizes=[(image.height, image.width)])[0]
        order = torch.argsort(result["scores"], descending=True)
        boxes = result["boxes"][order].float().cpu().numpy().reshape(-1, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, image.width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, image.height)
        labels = result.get("text_labels", result.get("labels"))
        return Detections(boxes.astype(np.float32), result["scores"][order].float().cpu().numpy(),
                          [str(labels[i]) for i in order.tolist()])

    def save_pretrained(self, path: str | Path) -> None:
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)
