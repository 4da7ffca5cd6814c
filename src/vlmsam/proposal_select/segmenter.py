"""SAM proposals + selection (LLM-Seg; SAM 3 Agent's set-of-marks).

Selector ``marks`` (training-free, below) or ``llmseg`` (a trained selection head on the ``[SEG]``
state of a VLM, ``proposal_select/llmseg.py``; pass the trained model as ``selector``).

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
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from vlmsam.data import prompts
from vlmsam.engine.contract import EncodedImage, SegmenterBase, is_sentence, mark_mask_tokens
from vlmsam.engine.registry import CONFIG_NAME, bundled_default, read_config, register, register_trainable
from vlmsam.errors import CheckpointError
from vlmsam.result import SegmentationResult
from vlmsam.sam.amg import AmgConfig, AutomaticMaskGenerator

MARKS_PROMPT = ("The image shows {n} numbered regions. Which region numbers does \"{request}\" refer to? "
                "Answer with the numbers separated by commas, or none if no region matches.")
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


def draw_marks(image: Image.Image, masks: np.ndarray) -> Image.Image:
    """The image with each mask tinted and its 1-based number written at the mask's most central pixel."""
    rgb = np.asarray(image.convert("RGB")).astype(np.float32)
    for k, mask in enumerate(masks):
        rgb[mask] = 0.6 * rgb[mask] + 0.4 * np.array(PALETTE[k % len(PALETTE)], np.float32)
    out = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for k, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        i = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
        draw.text((int(xs[i]) - 3, int(ys[i]) - 5), str(k + 1), fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    return out


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
    """Args:
        vlm: a :class:`~vlmsam.vlm.runtime.VlmRuntime` or :class:`~vlmsam.vlm.remote.RemoteVlm`.
        sam: a :class:`~vlmsam.sam.backend.SamBackend` (its automatic mask generator proposes).
        amg: the generator's settings; ``max_proposals``: the largest this many are shown.
    """

    name = "proposal_select"
    keeps_history = False

    def __init__(self, vlm, sam, *, amg: AmgConfig | None = None, max_proposals: int = 50, max_new_tokens: int = 32,
                 label: str = "", selector=None):
        super().__init__()
        self.vlm, self.sam = vlm, sam
        self.amg = AutomaticMaskGenerator(sam, amg or AmgConfig())
        self.max_proposals, self.max_new_tokens = max_proposals, max_new_tokens
        self.label = label or self.name
        self.selector = selector  # None: marks; an LlmSegModel: its trained head
        self.marks_masks = selector is not None  # llmseg answers mark "[mask k]" where each [SEG] was

    @property
    def model(self):
        return self.selector

    def _encode(self, image, key: str) -> EncodedImage:
        t0 = time.perf_counter()
        proposals = sorted(self.amg.generate(image), key=lambda p: -p.area)[: self.max_proposals]
        masks = np.stack([p.mask() for p in proposals]) if proposals else np.zeros((0, image.height, image.width), bool)
        extras = {"masks": masks, "scores": np.array([p.predicted_iou for p in proposals], np.float32)}
        if self.selector is None:
            extras["marks"] = draw_marks(image, masks)
        else:
            extras["features"] = self.selector.dino(image)  # what the head pools inside each proposal
        t1 = time.perf_counter()
        prefix = self.vlm.encode_image(extras.get("marks", image))  # llmseg's VLM sees the image itself
        return self.handle(image, key, vlm=prefix, extras=extras,
                           timings={"proposals": t1 - t0, "encode_vlm": time.perf_counter() - t1})

    def _segment_many(self, encoded: EncodedImage, requests: list[str], options: dict) -> list[SegmentationResult]:
        masks = encoded.extras["masks"]
        n = len(masks)
        shown = {"marks": encoded.extras["marks"]} if "marks" in encoded.extras else {}
        if n == 0:
            return [SegmentationResult.empty(encoded.size, info={"reason": "SAM proposed no region"},
                                             extra_images=shown) for _ in requests]
        kwargs = {"max_new_tokens": options.get("max_new_tokens") or self.max_new_tokens}
        if options.get("logits_processor") is not None:
            kwargs["logits_processor"] = options["logits_processor"]
        if self.selector is not None:
            return self._select_trained(encoded, requests, kwargs)
        answers = self.vlm.chat_many(encoded.vlm, [[(MARKS_PROMPT.format(n=n, request=r), None)] for r in requests], **kwargs)
        results = []
        for answer in answers:
            chosen, reason = parse_marks(answer, n)
            results.append(SegmentationResult(masks=masks[chosen].reshape(len(chosen), *encoded.size),
                                              scores=encoded.extras["scores"][chosen], text=answer,
                                              labels=[f"region {k + 1}" for k in chosen], info={"reason": reason} if reason else {},
                                              extra_images={"marks": encoded.extras["marks"]}))
        return results

    @torch.inference_mode()
    def _select_trained(self, encoded: EncodedImage, requests: list[str], kwargs: dict) -> list[SegmentationResult]:
        """llmseg: the VLM answers with [SEG]s; each [SEG]'s state picks proposals through the head."""
        model = self.selector
        conversations = [[(prompts.eval_question(r.rstrip(), is_sentence(r)), None)] for r in requests]
        answers = self.vlm.generate(encoded.vlm, conversations, state_token=model.config.seg_token_id, **kwargs)
        proposals = torch.from_numpy(encoded.extras["masks"]).to(self.vlm.device)
        results = []
        for answer in answers:
            chosen_masks, scores = [], []
            for state in answer.states:
                chosen, iou = model.choose(encoded.extras["features"], proposals, state)
                chosen_masks.append(proposals[chosen].any(0).cpu().numpy())
                scores.append(float(iou[chosen].max()))
            text = mark_mask_tokens(answer.tokens.tolist(), model.config.seg_token_id, self.vlm.decode)
            results.append(SegmentationResult(
                masks=np.stack(chosen_masks) if chosen_masks else np.zeros((0, *encoded.size), bool),
                scores=np.array(scores, np.float32), text=text))
        return results

    def to(self, device):
        if self.selector is not None:
            self.selector.to(device)
        if hasattr(self.vlm, "model"):
            self.vlm.model.to(device)
        self.sam.model.to(device)
        return self

    def save_pretrained(self, path: str | Path) -> Path:
        if self.selector is not None:
            from dataclasses import asdict

            self.selector.config.amg = asdict(self.amg.config)  # the proposals it was used with
            return self.selector.save_pretrained(path)
        out = Path(path)
        self.vlm.save_pretrained(out / "vlm")  # a remote VLM refuses: it has no weights here
        self.sam.model.save_pretrained(out / "sam")
        from dataclasses import asdict

        config = {"model_type": "vlmsam_proposal_select", "selector": "marks", "vlm": "vlm", "sam": "sam",
                  "amg": asdict(self.amg.config), "max_proposals": self.max_proposals, "max_new_tokens": self.max_new_tokens}
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        return out


DEFAULT_DIR_NAME = "vlmsam-tiny-llmseg"


def build(path=None, *, vlm=None, sam=None, device=None, dtype=None, max_new_tokens: int = 32, vlm_endpoint=None, **_):
    from vlmsam.sam import SamBackend
    from vlmsam.vlm.remote import RemoteVlm
    from vlmsam.vlm.runtime import VlmRuntime

    settings, label = {}, ""
    if path is None and not (vlm or sam or vlm_endpoint):
        path, label = bundled_default(DEFAULT_DIR_NAME, "make llmseg-model"), DEFAULT_DIR_NAME
    if path is not None:
        settings = read_config(path)
        if settings.get("selector") == "llmseg":
            return _build_llmseg(path, sam=sam, device=device, dtype=dtype, max_new_tokens=max_new_tokens, label=label)
        vlm = vlm or str(Path(path) / settings.get("vlm", "vlm"))
        sam = sam or str(Path(path) / settings.get("sam", "sam"))
    if not vlm or not sam:
        raise CheckpointError("proposal_select needs both a VLM (--vlm or --vlm-endpoint) and a SAM (--sam), or neither "
                              f"(the bundled {DEFAULT_DIR_NAME})")
    runtime = RemoteVlm(vlm_endpoint, vlm) if vlm_endpoint else VlmRuntime.load(vlm, dtype=dtype, device=device)
    return ProposalSelectSegmenter(runtime, SamBackend.from_pretrained(sam, device=device, dtype=dtype),
                                   amg=AmgConfig(**settings.get("amg", {})), max_proposals=settings.get("max_proposals", 50),
                                   max_new_tokens=settings.get("max_new_tokens", max_new_tokens), label=str(path or f"{vlm} + {sam}"))


def _build_llmseg(path, *, sam=None, device=None, dtype=None, max_new_tokens: int = 32, label: str = "") -> ProposalSelectSegmenter:
    from vlmsam.proposal_select.llmseg import LlmSegModel

    model = LlmSegModel.from_pretrained(path)
    if dtype is not None:
        model.to(dtype)
    if device is not None:
        model.to(device)
    return _llmseg_segmenter(model, sam=sam, label=label or str(path), max_new_tokens=max_new_tokens)


def _llmseg_segmenter(model, *, sam=None, label: str = "", max_new_tokens: int = 32) -> ProposalSelectSegmenter:
    """The segmenter of a (training or trained) LlmSegModel; its SAM, which proposes, is loaded once."""
    from vlmsam.sam import SamBackend
    from vlmsam.vlm.runtime import VlmRuntime

    device = next(model.parameters()).device
    backend = getattr(model, "_proposer", None)
    if backend is None or sam is not None:
        backend = SamBackend.from_pretrained(sam or model.config.sam, device=device)
        model._proposer = backend
    return ProposalSelectSegmenter(VlmRuntime(model.vlm, model.processor), backend, amg=AmgConfig(**model.config.amg),
                                   max_proposals=model.config.max_proposals,
                                   max_new_tokens=max_new_tokens, label=label or "proposal_select (llmseg)", selector=model)


def _llmseg_config():
    from vlmsam.proposal_select.llmseg import LlmSegConfig

    return LlmSegConfig


def _build_trainable(config):
    from vlmsam.proposal_select.llmseg import LlmSegModel

    return LlmSegModel.build(config)


register("proposal_select", build)
register_trainable("proposal_select", _llmseg_config(), _build_trainable, _llmseg_segmenter)
