"""VLM grounding -> SAM prompts (Qwen-VL + SAM, Seg-Zero / VisionReasoner), no ``[SEG]`` training.

The VLM is asked to locate the request (in its convention's own words), the answer is parsed into
boxes and points (``vlmsam.grounding``), and SAM draws each object from its box and its points; of
SAM's three candidate masks the one with the best predicted IoU is kept. One mask per object (with
the answer's labels), or their union (``union=True``). The VLM's text answer is kept as it is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from vlmsam.engine.contract import EncodedImage, HistoryOptions, SegmenterBase
from vlmsam.engine.contract import is_sentence as guess_sentence
from vlmsam.engine.registry import CONFIG_NAME, part, read_config
from vlmsam.engine.spec import BuildSpec, Capabilities
from vlmsam.errors import CheckpointError
from vlmsam.grounding import parse_grounding
from vlmsam.grounding import published
from vlmsam.grounding.prompts import grounding_prompt
from vlmsam.result import SegmentationResult

CONVENTION_OF_STYLE = {"qwen2_5_vl": "qwen2_5_vl", "qwen3_vl": "qwen3_vl", "qwen_vl": "qwen_vl",
                       # the published pipelines (vlmsam.grounding.published): their own resize, template and parse
                       "seg_zero": "published", "vision_reasoner": "published"}


DEFAULT_MAX_NEW_TOKENS = 128


class BoxPromptSegmenter(SegmenterBase):
    """Args:
        vlm: a :class:`~vlmsam.vlm.runtime.VlmRuntime` or :class:`~vlmsam.vlm.remote.RemoteVlm`.
        sam: a :class:`~vlmsam.sam.backend.SamBackend`.
        style: how the VLM is asked (``qwen2_5_vl``, ``qwen3_vl``, ``qwen_vl``); it decides the
            coordinate convention of the answer. ``seg_zero`` and ``vision_reasoner`` run those models'
            published inference end to end (840 x 840 input, their template, parse and SAM prompts, the
            objects' masks joined): see :mod:`vlmsam.grounding.published`.
        union: one mask (the union of the objects) instead of one per object.

    Options of ``segment``: ``is_sentence``, ``history`` (earlier ``(user, answer)`` turns, kept in
    the VLM's context), ``max_new_tokens``, ``logits_processor`` (local VLMs).
    """

    name = "box_prompt"
    capabilities = Capabilities(keeps_history=True)  # `vlmsam chat` keeps earlier turns in the VLM's context
    options_type = HistoryOptions

    def __init__(self, vlm, sam, *, style: str = "qwen2_5_vl", union: bool = False, multimask: bool = True,
                 max_new_tokens: int | None = None, label: str = "", prompt: str = "box+point"):
        super().__init__(label)
        if prompt not in ("box+point", "point"):
            raise CheckpointError(f"unknown SAM prompt '{prompt}'; choose 'box+point' or 'point'")
        self.prompt = prompt  # "point": objects with a point prompt SAM with the point alone (their box is kept)
        if style not in CONVENTION_OF_STYLE:
            raise CheckpointError(f"unknown grounding style '{style}'; choose from {', '.join(CONVENTION_OF_STYLE)}")
        self.vlm, self.sam = vlm, sam
        self.style, self.convention = style, CONVENTION_OF_STYLE[style]
        self.published = published.RECIPES.get(style)
        # the published pipelines reason before they answer: 1024 new tokens, as their scripts
        default_tokens = published.MAX_NEW_TOKENS if self.published else DEFAULT_MAX_NEW_TOKENS
        self.union, self.multimask, self.max_new_tokens = union, multimask, max_new_tokens or default_tokens

    def _encode(self, image, key: str) -> EncodedImage:
        if self.published:  # the VLM sees the 840 x 840 image, SAM the original
            handle = self.encode_parts(image, key, sam=self.sam)
            t0 = time.perf_counter()
            prefix = self.vlm.encode_image(published.vlm_image(image))
            timings = {**handle.timings, "encode_vlm": time.perf_counter() - t0}
            return self.handle(image, key, sam=handle.sam, vlm=prefix, timings=timings)
        return self.encode_parts(image, key, sam=self.sam, vlm=self.vlm,
                                 extras=lambda prefix: {"model_input_size": self.vlm.model_input_size(prefix)})

    def ask(self, request: str, is_sentence: bool | None = None) -> str:
        """The words the VLM is given for ``request`` in this segmenter's style."""
        return grounding_prompt(request, guess_sentence(request) if is_sentence is None else is_sentence, self.style)

    def _segment_many(self, encoded: EncodedImage, requests: list[str], options: dict) -> list[SegmentationResult]:
        t0 = time.perf_counter()
        flags = self.sentence_flags(options, len(requests))
        history = list(options.get("history") or [])
        conversations = [[*history, (self.ask(r, s), None)] for r, s in zip(requests, flags)]
        texts = self.vlm.chat_many(encoded.vlm, conversations, **self.generation(options))
        t1 = time.perf_counter()
        results = [self._result(encoded, text) for text in texts]
        t2 = time.perf_counter()
        for r in results:
            r.timings.update({"generate": (t1 - t0) / len(results), "decode_masks": (t2 - t1) / len(results)})
        return results

    def _result(self, encoded: EncodedImage, text: str) -> SegmentationResult:
        h, w = encoded.size
        if self.published:
            g = published.parse_published(self.style, text, (w, h))
        else:
            g = parse_grounding(text, (w, h), encoded.extras["model_input_size"], self.convention)
        info = {"reason": g.reason} if g.reason else {}
        if not len(g):
            return SegmentationResult.empty((h, w), text=text, info=info)
        if self.published:
            return self._published_masks(encoded, g, text, info)
        masks = np.zeros((len(g), h, w), bool)
        scores = np.zeros(len(g), np.float32)
        with_points = [k for k, p in enumerate(g.points) if len(p)]
        without = [k for k, p in enumerate(g.points) if not len(p)]
        # All boxes of a request in one batched decoder call (two where only some objects have points).
        for group in (with_points, without):
            if not group:
                continue
            boxes = g.boxes[group]
            points = None
            if group is with_points:
                n = min(len(g.points[k]) for k in group)  # same count per prompt in one batch
                points = np.stack([g.points[k][:n] for k in group])
                if self.prompt == "point":
                    boxes = None
            pred = self.sam.predict(boxes=boxes, points=points, multimask_output=self.multimask, embedding=encoded.sam)
            if self.multimask:
                pred = pred.best()
            masks[group] = pred.masks[:, 0].cpu().numpy()
            scores[group] = pred.iou_scores[:, 0].cpu().numpy()
        if self.union:
            union = masks.any(axis=0, keepdims=True)
            return SegmentationResult(masks=union, scores=scores.mean(keepdims=True), text=text,
                                      labels=[", ".join(lab for lab in g.labels if lab)], info=info)
        return SegmentationResult(masks=masks, boxes=g.boxes, scores=scores, text=text, labels=g.labels, info=info)

    def _published_masks(self, encoded, g, text: str, info: dict) -> SegmentationResult:
        """As published: each object's box and point(s) (all positive) in one SAM call, three candidates,
        the best-scored kept, the objects joined by OR into one mask."""
        points = np.stack(g.points)  # (N, P, 2): Seg-Zero one object with two points, VisionReasoner one point each
        pred = self.sam.predict(boxes=g.boxes, points=points, multimask_output=True, embedding=encoded.sam).best()
        union = pred.masks[:, 0].cpu().numpy().any(axis=0, keepdims=True)
        info = {**info, "objects": len(g), "boxes": g.boxes.tolist(), "points": points.tolist()}
        return SegmentationResult(masks=union, scores=pred.iou_scores[:, 0].mean(0, keepdim=True).cpu().numpy(), text=text,
                                  info=info)

    @property
    def device(self):
        return self.sam.device

    def to(self, device) -> BoxPromptSegmenter:
        self.vlm.to(device)  # a remote VLM stays where its server runs
        self.sam.model.to(device)
        return self

    def save_pretrained(self, path: str | Path) -> Path:
        """A checkpoint ``load_segmenter`` reads: the config, ``vlm/`` (model and processor) and ``sam/``."""
        out = Path(path)
        self.vlm.save_pretrained(out / "vlm")  # a remote VLM refuses: it has no weights here
        self.sam.model.save_pretrained(out / "sam")
        config = {"model_type": "vlmsam_box_prompt", "vlm": "vlm", "sam": "sam", "style": self.style, "union": self.union,
                  "multimask": self.multimask, "max_new_tokens": self.max_new_tokens, "prompt": self.prompt}
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        return out


DEFAULT_DIR_NAME = "vlmsam-tiny-grounding"


def build(spec: BuildSpec) -> BoxPromptSegmenter:
    """A box_prompt checkpoint (``spec.path``), the bundled default (nothing named), base models by hub id
    or path (``vlm`` + ``sam``), or a remote VLM (``vlm_endpoint`` + ``vlm`` as its model name) with ``sam``."""
    from vlmsam.engine.registry import bundled_default
    from vlmsam.sam import load_sam_backend
    from vlmsam.vlm.remote import RemoteVlm
    from vlmsam.vlm.runtime import VlmRuntime

    path, vlm, sam, vlm_endpoint, device, dtype = spec.path, spec.vlm, spec.sam, spec.vlm_endpoint, spec.device, spec.dtype
    settings = {}
    label = ""
    if path is None and not (vlm or sam or vlm_endpoint):
        path, label = bundled_default(DEFAULT_DIR_NAME, "make box-prompt-model"), DEFAULT_DIR_NAME
    if path is not None:
        path = Path(path)
        settings = read_config(path)
        vlm = vlm or part(path, settings, "vlm")
        sam = sam or part(path, settings, "sam")
        label = label or str(path)
    if not sam:
        raise CheckpointError("box_prompt needs a SAM: name one with --sam (hub id, directory or Meta .pth)")
    if vlm_endpoint:
        if not vlm:
            raise CheckpointError("--vlm-endpoint needs --vlm: the model name the server serves")
        runtime = RemoteVlm(vlm_endpoint, vlm)
    elif vlm:
        runtime = VlmRuntime.load(vlm, dtype=dtype, device=device)
    else:
        raise CheckpointError("box_prompt needs a VLM: name one with --vlm (hub id or path) or --vlm-endpoint")
    backend = load_sam_backend(sam, device=device, dtype=dtype)
    style = spec.style or settings.get("style", "qwen2_5_vl")
    # a checkpoint's own limit stands only for the style it was saved with
    saved_tokens = settings.get("max_new_tokens") if style == settings.get("style", "qwen2_5_vl") else None
    return BoxPromptSegmenter(runtime, backend, style=style, union=settings.get("union", False),
                              multimask=settings.get("multimask", True), prompt=settings.get("prompt", "box+point"),
                              max_new_tokens=spec.max_new_tokens or saved_tokens,
                              label=label or f"{vlm} + {sam}")
