"""Phrases -> Grounding DINO boxes -> SAM masks (Grounded-SAM), with or without a VLM in front.

* ``grounded``: the request itself is the phrase (the lang-segment-anything baseline, no VLM).
* ``gsam``: the VLM answers the request; every ``<gsam>noun phrase</gsam>`` in its answer (the tool tag
  a LLaVA-Plus-style model is taught, see ``vlmsam data convert-llava-plus``) goes to the detector,
  and each detected box to SAM. An answer without a tag has no mask.

With SAM 3 as the SAM and no detector, SAM 3 is the one model: each phrase goes to its concept head,
which returns every instance with its mask; a phrase its presence head rejects has no mask.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlmsam.detect.grounding_dino import BOX_THRESHOLD, TEXT_THRESHOLD, GroundingDino
from vlmsam.engine.contract import EncodedImage, HistoryOptions, SegmenterBase, SegmentOptions, check_fraction
from vlmsam.engine.registry import CONFIG_NAME, part, read_config
from vlmsam.engine.spec import BuildSpec, Capabilities
from vlmsam.errors import CheckpointError
from vlmsam.sam.sam3_backend import SCORE_THRESHOLD
from vlmsam.result import SegmentationResult

TAG = re.compile(r"<gsam>(.*?)</gsam>", re.S)
SAM3_DEFAULT = "sam3-tiny"  # grounded's bundled default: a tiny SAM 3 trained here (make sam3-model)
MAX_BOXES = 100
# A request's wrapping around its noun phrase ("Could you segment all the red circles in this image?"):
# SAM 3's concept head is trained on short noun phrases, so grounded hands it the phrase alone.
_LEADING = re.compile(r"^(?:please|kindly|(?:can|could|would|will) you|i (?:need|want|would like)(?: you)?(?: to)?|"
                      r"(?:draw|put|give) (?:a )?(?:mask|outline|box) (?:over|on|around|for|of)|(?:pick|cut|segment) out|"
                      r"segment|find|show(?: me)?|highlight|mask|detect|locate|outline|select|mark|give me|"
                      r"point (?:out|to)|where (?:is|are)|which (?:is|are)|what (?:is|are)|"
                      r"all of the|all the|all|every|each|the|a|an)\s+")
_TRAILING = re.compile(r"\s+(?:in|from|of|on) (?:this|the) (?:image|picture|photo|scene)$|\s+(?:please|here|"
                       r"that you can see|(?:shown|visible|present) (?:here|in (?:this|the) (?:image|picture)))$")


def _option(options: dict, name: str, default):
    """An option's value, or the segmenter's own where the request gives none (or gives None)."""
    value = options.get(name)
    return default if value is None else value


def concept_phrase(request: str) -> str:
    """The noun phrase of a request, for SAM 3: lower case, its verbs, politeness, quantifiers and
    "in this image" removed ("Could you segment all the red circles?" -> "red circles")."""
    text = " ".join(request.lower().split()).strip(" ?.!,;:")
    while True:
        shorter = _TRAILING.sub("", _LEADING.sub("", text)).strip(" ?.!,;:")
        if shorter == text or not shorter:
            return text
        text = shorter


def tool_phrases(answer: str) -> list[str]:
    """The noun phrases a VLM put in ``<gsam>...</gsam>`` tags, in order, empty ones dropped."""
    return [p.strip() for p in TAG.findall(answer or "") if p.strip()]


@dataclass(frozen=True)
class DetectorOptions(SegmentOptions):
    """Grounding DINO's thresholds for these requests (default: the segmenter's)."""

    box_threshold: float | None = None
    text_threshold: float | None = None
    score_threshold: float | None = None  # SAM 3's confidence (class x presence), when SAM 3 is the detector

    def check(self) -> None:
        super().check()
        for name in ("box_threshold", "text_threshold", "score_threshold"):
            check_fraction(name, getattr(self, name))


@dataclass(frozen=True)
class GsamOptions(DetectorOptions, HistoryOptions):
    """gsam's options: the detector's thresholds and the conversation so far."""


class GroundedSegmenter(SegmenterBase):
    """A phrase straight to the detector and SAM. Options: ``box_threshold`` (0.3), ``text_threshold`` (0.25);
    with SAM 3 and no detector, ``score_threshold`` (0.5)."""

    name = "grounded"
    options_type = DetectorOptions

    def __init__(self, detector: GroundingDino | None, sam, *, box_threshold: float = BOX_THRESHOLD,
                 text_threshold: float = TEXT_THRESHOLD, multimask: bool = True, score_threshold: float = SCORE_THRESHOLD,
                 label: str = ""):
        super().__init__(label)
        if detector is None and not hasattr(sam, "segment_phrases"):
            raise CheckpointError("without a detector the SAM must be a SAM 3 (it finds phrases itself): "
                                  "name a Grounding DINO with --detector or a SAM 3 with --sam")
        self.detector, self.sam = detector, sam
        self.box_threshold, self.text_threshold, self.multimask = box_threshold, text_threshold, multimask
        self.score_threshold = score_threshold

    @property
    def device(self):
        return self.sam.device

    def _encode(self, image, key: str) -> EncodedImage:
        return self.encode_parts(image, key, sam=self.sam, extras={"image": image})

    def _masks_for(self, encoded: EncodedImage, phrases: list[str], options: dict, text: str) -> SegmentationResult:
        if self.detector is None:
            return self._sam3_masks(encoded, phrases, options, text)
        h, w = encoded.size
        boxes, scores, labels = [], [], []
        for phrase in phrases:
            found = self.detector.detect(encoded.extras["image"], phrase,
                                         box_threshold=_option(options, "box_threshold", self.box_threshold),
                                         text_threshold=_option(options, "text_threshold", self.text_threshold))
            boxes.append(found.boxes)
            scores.extend(found.scores.tolist())
            labels.extend(lab or phrase for lab in found.labels)
        boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        boxes, scores = boxes[keep][:MAX_BOXES], np.asarray(scores, np.float32)[keep][:MAX_BOXES]
        labels = [lab for lab, k in zip(labels, keep) if k][:MAX_BOXES]
        info = {"phrases": phrases, "detector_scores": [round(float(s), 4) for s in scores]}
        if not len(boxes):
            return SegmentationResult.empty((h, w), text=text, info={**info, "reason": "no box above the thresholds"})
        pred = self.sam.predict(boxes=boxes, multimask_output=self.multimask, embedding=encoded.sam)  # one batched call
        if self.multimask:
            pred = pred.best()
        return SegmentationResult(masks=pred.masks[:, 0].cpu().numpy(), boxes=boxes,
                                  scores=pred.iou_scores[:, 0].cpu().numpy(), text=text, labels=labels, info=info)

    def _sam3_masks(self, encoded: EncodedImage, phrases: list[str], options: dict, text: str) -> SegmentationResult:
        """Every instance of every phrase from SAM 3's concept head (one batched call for all phrases)."""
        threshold = _option(options, "score_threshold", self.score_threshold)
        found = self.sam.segment_phrases(encoded.sam, phrases, threshold=threshold)
        info = {"phrases": phrases, "presence": [round(f.presence, 4) for f in found]}
        masks = [m for f in found for m in f.masks][:MAX_BOXES]
        if not masks:
            return SegmentationResult.empty(encoded.size, text=text, info={**info, "reason": "SAM 3 found no instance above the threshold"})
        h, w = encoded.size
        boxes = np.concatenate([f.boxes for f in found])[:MAX_BOXES]
        boxes = np.stack([boxes[:, 0].clip(0, w), boxes[:, 1].clip(0, h), boxes[:, 2].clip(0, w), boxes[:, 3].clip(0, h)], axis=1)
        # clipped to the image, as every result's boxes are (Sam3Instances keeps SAM 3's own, unclipped, as Meta)
        return SegmentationResult(masks=np.stack(masks), boxes=boxes,
                                  scores=np.concatenate([f.scores for f in found])[:MAX_BOXES], text=text,
                                  labels=[f.phrase for f in found for _ in range(len(f))][:MAX_BOXES], info=info)

    def _segment(self, encoded: EncodedImage, request: str, options: dict) -> SegmentationResult:
        t0 = time.perf_counter()
        phrase = concept_phrase(request) if self.detector is None else request
        result = self._masks_for(encoded, [phrase], options, text="")
        result.timings["detect_and_decode"] = time.perf_counter() - t0
        return result

    def to(self, device):
        if self.detector is not None:
            self.detector.model.to(device)
        self.sam.to(device)
        return self

    def _config(self) -> dict:
        return {"model_type": f"vlmsam_{self.name}", "detector": "detector" if self.detector is not None else None,
                "sam": "sam", "box_threshold": self.box_threshold, "text_threshold": self.text_threshold,
                "score_threshold": self.score_threshold, "multimask": self.multimask}

    def save_pretrained(self, path: str | Path, sam_state: dict | None = None) -> Path:
        """``sam_state``: the SAM's weights to write instead of its own (a LoRA run's merged SAM 3)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        if self.detector is not None:
            self.detector.save_pretrained(out / "detector")
        self.sam.save_pretrained(out / "sam", **({} if sam_state is None else {"state_dict": sam_state}))
        (out / CONFIG_NAME).write_text(json.dumps(self._config(), indent=2))
        return out


class GsamSegmenter(GroundedSegmenter):
    """The VLM answers; its ``<gsam>`` phrases go to the detector and SAM. Options as ``grounded``, plus
    ``history`` and ``max_new_tokens``."""

    name = "gsam"
    capabilities = Capabilities(keeps_history=True)
    options_type = GsamOptions

    def __init__(self, vlm, detector: GroundingDino, sam, *, max_new_tokens: int = 128, **kwargs):
        super().__init__(detector, sam, **kwargs)
        self.vlm, self.max_new_tokens = vlm, max_new_tokens

    def to(self, device):
        self.vlm.to(device)  # a remote VLM stays where its server runs
        return super().to(device)

    def _encode(self, image, key: str) -> EncodedImage:
        return self.encode_parts(image, key, sam=self.sam, vlm=self.vlm, extras={"image": image})

    def _segment_many(self, encoded: EncodedImage, requests: list[str], options: dict) -> list[SegmentationResult]:
        history = list(options.get("history") or [])
        answers = self.vlm.chat_many(encoded.vlm, [[*history, (r, None)] for r in requests], **self.generation(options))
        results = []
        for answer in answers:
            phrases = tool_phrases(answer)
            if phrases:
                results.append(self._masks_for(encoded, phrases, options, text=answer))
            else:
                results.append(SegmentationResult.empty(encoded.size, text=answer, info={"reason": "no <gsam> tag in the answer"}))
        return results

    def _segment(self, encoded, request, options):
        return self._segment_many(encoded, [request], options)[0]

    def _config(self) -> dict:
        return {**super()._config(), "vlm": "vlm", "max_new_tokens": self.max_new_tokens}

    def save_pretrained(self, path: str | Path) -> Path:
        self.vlm.save_pretrained(Path(path) / "vlm")  # first: a remote VLM refuses before anything is written
        return super().save_pretrained(path)


def _parts(path, sam, detector, device, dtype, settings):
    from vlmsam.sam import load_sam_backend

    if path is not None:
        sam = sam or part(path, settings, "sam")
        detector = detector or (part(path, settings, "detector") if settings.get("detector", "detector") else None)
    if not sam:
        raise CheckpointError("name a SAM 3 (--sam facebook/sam3), or a SAM (--sam) and a Grounding DINO "
                              "(--detector, e.g. IDEA-Research/grounding-dino-tiny)")
    thresholds = {k: settings[k] for k in ("box_threshold", "text_threshold", "score_threshold", "multimask") if k in settings}
    backend = load_sam_backend(sam, device=device, dtype=dtype)
    if not detector and not hasattr(backend, "segment_phrases"):
        raise CheckpointError(f"{sam} is not a SAM 3, so it cannot find phrases itself: name a Grounding DINO with "
                              "--detector (e.g. IDEA-Research/grounding-dino-tiny) or a SAM 3 with --sam")
    return (GroundingDino.from_pretrained(detector, device=device, dtype=dtype) if detector else None), backend, thresholds


def build_grounded(spec: BuildSpec) -> GroundedSegmenter:
    """A grounded checkpoint (``spec.path``), base models (``spec.sam`` + ``spec.detector``, or a SAM 3 alone),
    or, with none named, the bundled offline tiny SAM 3 (``weights/sam3-tiny``)."""
    path = spec.path or None
    if path is None and not spec.sam and not spec.detector:
        from vlmsam.engine.registry import bundled_default

        path = bundled_default(SAM3_DEFAULT, "make sam3-model")
    settings = read_config(path) if path is not None else {}
    det, backend, extra = _parts(path, spec.sam, spec.detector, spec.device, spec.dtype, settings)
    return GroundedSegmenter(det, backend, label=str(path or (f"{spec.detector} + {spec.sam}" if det else spec.sam)), **extra)


def build_gsam(spec: BuildSpec) -> GsamSegmenter:
    """A gsam checkpoint (``spec.path``) or base models (``vlm`` or ``vlm_endpoint`` + ``vlm``, ``sam``, ``detector``)."""
    from vlmsam.vlm.remote import RemoteVlm
    from vlmsam.vlm.runtime import VlmRuntime

    path, vlm = spec.path or None, spec.vlm
    settings = read_config(path) if path is not None else {}
    if path is not None:
        vlm = vlm or part(path, settings, "vlm")
    if not vlm:
        raise CheckpointError("gsam needs a VLM that answers <gsam> tags: name one with --vlm (or --vlm-endpoint)")
    runtime = RemoteVlm(spec.vlm_endpoint, vlm) if spec.vlm_endpoint else VlmRuntime.load(vlm, dtype=spec.dtype, device=spec.device)
    det, backend, extra = _parts(path, spec.sam, spec.detector, spec.device, spec.dtype, settings)
    return GsamSegmenter(runtime, det, backend, max_new_tokens=spec.max_new_tokens or settings.get("max_new_tokens", 128),
                         label=str(path or " + ".join(str(p) for p in (vlm, spec.detector, spec.sam) if p)), **extra)
