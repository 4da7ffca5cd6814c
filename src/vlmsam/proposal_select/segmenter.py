"""SAM proposals + selection (LLM-Seg; SAM 3 Agent's set-of-marks).

Two selectors, two classes: :class:`MarksSegmenter` (training-free, below) and :class:`LlmSegSegmenter`
(a trained selection head on the ``[SEG]`` state of a VLM, ``proposal_select/llmseg.py``).

Where the objects are is SAM's job: its automatic masks, computed once per image (when it is
encoded). Which of them the request means is the VLM's: the proposals are drawn on the image with
their numbers (set-of-marks) and the VLM, looking at that picture, answers the numbers; "none" is
a valid answer. One mask per chosen proposal is returned (scoring takes their union); the marks
image is kept in the result (``extra_images["marks"]``) so a person sees what the VLM saw.
"""

from __future__ import annotations

import json
import re
import time
import weakref
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlmsam.data import prompts
from vlmsam.engine.contract import EncodedImage, SegmenterBase, is_sentence, mark_mask_tokens
from vlmsam.engine.registry import CONFIG_NAME, bundled_default, part, read_config
from vlmsam.engine.spec import BuildSpec, Capabilities
from vlmsam.errors import CheckpointError
from vlmsam.io.marks import PALETTE, draw_marks  # noqa: F401  (PALETTE: public here too)
from vlmsam.result import SegmentationResult
from vlmsam.sam.amg import AmgConfig, AutomaticMaskGenerator
from vlmsam.vlm.runtime import VlmRuntime

DEFAULT_MAX_NEW_TOKENS = 32

MARKS_PROMPT = ("The image shows {n} numbered regions. Which region numbers does \"{request}\" refer to? "
                "Answer with the numbers separated by commas, or none if no region matches.")
def parse_marks(answer: str, n: int) -> tuple[list[int], str]:
    """0-based indices of the marks an answer names (1..n, in order, once each), and why none if none."""
    if re.search(r"\bnone\b|\bno region\b|\bnothing\b", answer.lower()):
        return [], "the VLM answered none"
    chosen = []
    for token in re.findall(r"\d+", answer):
        k = int(token)
        if 1 <= k <= n and k - 1 not in chosen:
            chosen.append(k - 1)
    return chosen, ("" if chosen else f"no region number between 1 and {n} in the answer")


class ProposalSelectSegmenter(SegmenterBase):
    """What both selectors share: SAM's automatic mask generator proposes regions once per image, and a
    selector picks among them per request.

    Args:
        vlm: a :class:`~vlmsam.vlm.runtime.VlmRuntime` or :class:`~vlmsam.vlm.remote.RemoteVlm`.
        sam: a SAM backend (``SamBackend``, ``Sam2Backend`` or ``Sam3Backend``'s tracker): its automatic mask
            generator proposes.
        amg: the generator's settings; ``max_proposals``: the largest this many are shown.
    """

    name = "proposal_select"

    def __init__(self, vlm, sam, *, amg: AmgConfig | None = None, max_proposals: int = 50,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, label: str = ""):
        super().__init__(label)
        self.vlm, self.sam = vlm, sam
        self.amg = AutomaticMaskGenerator(sam, amg or AmgConfig())
        self.max_proposals, self.max_new_tokens = max_proposals, max_new_tokens

    @property
    def device(self):
        return self.sam.device

    def to(self, device):
        self.vlm.to(device)  # a remote VLM stays where its server runs
        self.sam.to(device)
        return self

    def _proposals(self, image) -> dict:
        proposals = sorted(self.amg.generate(image), key=lambda p: -p.area)[: self.max_proposals]
        masks = np.stack([p.mask() for p in proposals]) if proposals else np.zeros((0, image.height, image.width), bool)
        return {"masks": masks, "scores": np.array([p.predicted_iou for p in proposals], np.float32)}


class MarksSegmenter(ProposalSelectSegmenter):
    """The VLM sees the proposals drawn as numbered marks and answers their numbers (Set-of-Mark)."""

    def _encode(self, image, key: str) -> EncodedImage:
        t0 = time.perf_counter()
        extras = self._proposals(image)
        extras["marks"] = draw_marks(image, extras["masks"])
        t1 = time.perf_counter()
        prefix = self.vlm.encode_image(extras["marks"])
        return self.handle(image, key, vlm=prefix, extras=extras,
                           timings={"proposals": t1 - t0, "encode_vlm": time.perf_counter() - t1})

    def _segment_many(self, encoded: EncodedImage, requests: list[str], options: dict) -> list[SegmentationResult]:
        masks, marks = encoded.extras["masks"], encoded.extras["marks"]
        n = len(masks)
        if n == 0:
            return [SegmentationResult.empty(encoded.size, info={"reason": "SAM proposed no region"},
                                             extra_images={"marks": marks}) for _ in requests]
        answers = self.vlm.chat_many(encoded.vlm, [[(MARKS_PROMPT.format(n=n, request=r), None)] for r in requests],
                                     **self.generation(options))
        results = []
        for answer in answers:
            chosen, reason = parse_marks(answer, n)
            results.append(SegmentationResult(masks=masks[chosen].reshape(len(chosen), *encoded.size),
                                              scores=encoded.extras["scores"][chosen], text=answer,
                                              labels=[f"region {k + 1}" for k in chosen], info={"reason": reason} if reason else {},
                                              extra_images={"marks": marks}))
        return results

    def save_pretrained(self, path: str | Path) -> Path:
        out = Path(path)
        self.vlm.save_pretrained(out / "vlm")  # a remote VLM refuses: it has no weights here
        self.sam.save_pretrained(out / "sam")
        config = {"model_type": "vlmsam_proposal_select", "selector": "marks", "vlm": "vlm", "sam": "sam",
                  "amg": asdict(self.amg.config), "max_proposals": self.max_proposals, "max_new_tokens": self.max_new_tokens}
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        return out


class LlmSegSegmenter(ProposalSelectSegmenter):
    """LLM-Seg: the VLM answers with ``[SEG]`` tokens; each one's hidden state picks proposals through the
    trained head of ``model`` (an :class:`~vlmsam.proposal_select.llmseg.LlmSegModel`)."""

    capabilities = Capabilities(marks_masks=True, trainable=True)  # "[mask k]" where each [SEG] was

    def __init__(self, model, sam, **kwargs):
        super().__init__(VlmRuntime(model.vlm, model.processor), sam, **kwargs)
        self.model = model

    def to(self, device):
        self.model.to(device)
        return super().to(device)

    def _encode(self, image, key: str) -> EncodedImage:
        t0 = time.perf_counter()
        extras = self._proposals(image)
        extras["features"] = self.model.dino(image)  # what the head pools inside each proposal
        t1 = time.perf_counter()
        prefix = self.vlm.encode_image(image)
        return self.handle(image, key, vlm=prefix, extras=extras,
                           timings={"proposals": t1 - t0, "encode_vlm": time.perf_counter() - t1})

    @torch.inference_mode()
    def _segment_many(self, encoded: EncodedImage, requests: list[str], options: dict) -> list[SegmentationResult]:
        if len(encoded.extras["masks"]) == 0:
            return [SegmentationResult.empty(encoded.size, info={"reason": "SAM proposed no region"}) for _ in requests]
        seg_id = self.model.config.seg_token_id
        conversations = [[(prompts.eval_question(r.rstrip(), is_sentence(r)), None)] for r in requests]
        answers = self.vlm.generate(encoded.vlm, conversations, state_token=seg_id, **self.generation(options))
        proposals = torch.from_numpy(encoded.extras["masks"]).to(self.vlm.device)
        results = []
        for answer in answers:
            chosen_masks, scores = [], []
            for state in answer.states:
                chosen, iou = self.model.choose(encoded.extras["features"], proposals, state)
                chosen_masks.append(proposals[chosen].any(0).cpu().numpy())
                scores.append(float(iou[chosen].max()))
            results.append(SegmentationResult(
                masks=np.stack(chosen_masks) if chosen_masks else np.zeros((0, *encoded.size), bool),
                scores=np.array(scores, np.float32), text=mark_mask_tokens(answer.tokens.tolist(), seg_id, self.vlm.decode)))
        return results

    def save_pretrained(self, path: str | Path) -> Path:
        return self.model.save_pretrained(path, amg=asdict(self.amg.config))  # with the proposals it was used with


DEFAULT_DIR_NAME = "vlmsam-tiny-llmseg"


def build(spec: BuildSpec) -> ProposalSelectSegmenter:
    """A proposal_select checkpoint (either selector), the bundled llmseg default (nothing named), or base
    models (``vlm`` or ``vlm_endpoint`` + ``vlm``, and ``sam``) for the marks selector."""
    from vlmsam.sam import load_sam_backend
    from vlmsam.vlm.remote import RemoteVlm

    path, vlm, sam, label, settings = spec.path or None, spec.vlm, spec.sam, "", {}
    if path is None and not (vlm or sam or spec.vlm_endpoint):
        path, label = bundled_default(DEFAULT_DIR_NAME, "make llmseg-model"), DEFAULT_DIR_NAME
    if path is not None:
        settings = read_config(path)
        if settings.get("selector") == "llmseg":
            return _build_llmseg(path, spec, label)
        vlm = vlm or part(path, settings, "vlm")
        sam = sam or part(path, settings, "sam")
    if not vlm or not sam:
        raise CheckpointError("proposal_select needs both a VLM (--vlm or --vlm-endpoint) and a SAM (--sam), or neither "
                              f"(the bundled {DEFAULT_DIR_NAME})")
    runtime = RemoteVlm(spec.vlm_endpoint, vlm) if spec.vlm_endpoint else VlmRuntime.load(vlm, dtype=spec.dtype, device=spec.device)
    return MarksSegmenter(runtime, load_sam_backend(sam, device=spec.device, dtype=spec.dtype),
                          amg=AmgConfig(**settings.get("amg", {})), max_proposals=settings.get("max_proposals", 50),
                          max_new_tokens=spec.max_new_tokens or settings.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS),
                          label=str(path or f"{vlm} + {sam}"))


def _build_llmseg(path, spec: BuildSpec, label: str) -> LlmSegSegmenter:
    from vlmsam.proposal_select.llmseg import LlmSegModel

    model = LlmSegModel.from_pretrained(path)
    if spec.dtype is not None:
        model.to(spec.dtype)
    if spec.device is not None:
        model.to(spec.device)
    return llmseg_segmenter(model, sam=spec.sam, label=label or str(path), max_new_tokens=spec.max_new_tokens)


# The proposing SAM of each LlmSegModel in use, loaded once (validation builds a segmenter every time).
_PROPOSERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def llmseg_segmenter(model, *, sam=None, label: str = "", max_new_tokens: int | None = None) -> LlmSegSegmenter:
    """The segmenter of a (training or trained) LlmSegModel; ``sam`` (default: the model config's) proposes."""
    from vlmsam.sam import load_sam_backend

    device = next(model.parameters()).device
    backend = None if sam is not None else _PROPOSERS.get(model)
    if backend is None:
        backend = load_sam_backend(sam or model.config.sam, device=device)
        if sam is None:
            _PROPOSERS[model] = backend
    return LlmSegSegmenter(model, backend, amg=AmgConfig(**model.config.amg), max_proposals=model.config.max_proposals,
                           max_new_tokens=max_new_tokens or DEFAULT_MAX_NEW_TOKENS, label=label or "proposal_select (llmseg)")
