"""The ``[SEG]`` model behind the segmenter contract (``vlmsam.engine``).

It phrases the raw request the way the model was trained ("What is {x} in this image? Please
output segmentation mask." / "{sentence} Please output segmentation mask."), decodes all requests
about one image in one batch on the image's cached prefix, and turns each ``[SEG]`` into a mask.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from vlmsam.data import prompts
from vlmsam.engine.contract import EncodedImage, SegmenterBase, is_sentence, mark_mask_tokens
from vlmsam.engine.spec import BuildSpec, Capabilities
from vlmsam.errors import CheckpointError
from vlmsam.result import SegmentationResult
from vlmsam.sam.backend import MASK_THRESHOLD
from vlmsam.vlm.generation import Generated
from vlmsam.vlm.runtime import VlmRuntime


DEFAULT_MAX_NEW_TOKENS = 128


def seg_prompt(request: str, sentence: bool | None = None) -> str:
    """The evaluation prompt the model was trained with; a request that already asks for a mask is kept."""
    if "segmentation mask" in request.lower():
        return request
    return prompts.eval_question(request.rstrip(), is_sentence(request) if sentence is None else sentence)


class SegTokenSegmenter(SegmenterBase):
    """``[SEG]``-token segmentation (LISA / Qwen-SAM) over a :class:`SegTokenModel`.

    Options of :meth:`segment` / :meth:`segment_many`: ``is_sentence`` (None: guessed from the
    request), ``max_new_tokens`` (default 128), ``logits_processor`` (tests force answers with it).
    """

    name = "seg_token"
    capabilities = Capabilities(marks_masks=True, trainable=True)  # "[mask k]" where the k-th [SEG] was

    def __init__(self, model, label: str = "", max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
        super().__init__(label)
        self.model = model.eval()
        self.max_new_tokens = max_new_tokens
        self.vlm = VlmRuntime(model.vlm, model.processor)  # the shared runtime: prefix, batched decoding

    @property
    def device(self) -> torch.device:
        return next(self.model.vlm.parameters()).device

    def to(self, device) -> SegTokenSegmenter:
        self.model.to(device)
        return self

    @torch.inference_mode()
    def _encode(self, image, key: str) -> EncodedImage:
        return self.encode_parts(image, key, sam=self.model.sam_backend, vlm=self.vlm)

    @torch.inference_mode()
    def generate(self, encoded: EncodedImage, requests: list[str], **options) -> list[Generated]:
        """The raw answers (token ids and ``[SEG]`` states) to ``requests``, decoded in one batch."""
        flags = self.sentence_flags(options, len(requests))
        conversations = [[(seg_prompt(r, s), None)] for r, s in zip(requests, flags)]
        return self.vlm.generate(encoded.vlm, conversations, state_token=self.model.config.seg_token_id,
                                 **self.generation(options))

    def _segment_many(self, encoded: EncodedImage, requests: list[str], options: dict) -> list[SegmentationResult]:
        t0 = time.perf_counter()
        answers = self.generate(encoded, requests, **options)
        t1 = time.perf_counter()
        with torch.inference_mode():
            results = [self._result(encoded, a) for a in answers]
        t2 = time.perf_counter()
        for r in results:
            r.timings.update({"generate": (t1 - t0) / len(results), "decode_masks": (t2 - t1) / len(results)})
        return results

    def _result(self, encoded: EncodedImage, answer: Generated) -> SegmentationResult:
        states = answer.states.to(next(self.model.projection.parameters()).dtype)
        logits, iou = self.model.masks_from_states(states, encoded.sam)
        return SegmentationResult(masks=(logits > MASK_THRESHOLD).cpu().numpy(), scores=iou.float().cpu().numpy(),
                                  text=self.answer_text(answer.tokens))

    def answer_text(self, tokens: torch.Tensor) -> str:
        """The answer with ``[mask k]`` where the k-th ``[SEG]`` was ("Sure, [mask 1].")."""
        return mark_mask_tokens(tokens.tolist(), self.model.config.seg_token_id, self.vlm.decode)

    def save_pretrained(self, path: str | Path) -> Path:
        return self.model.save_pretrained(path)


def build(spec: BuildSpec) -> SegTokenSegmenter:
    """A checkpoint directory (``spec.path``), the bundled vlmsam-tiny (nothing named), or base models
    (``spec.vlm``/``spec.sam``)."""
    from vlmsam.engine.registry import DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME, bundled_default
    from vlmsam.seg_token.config import SegTokenConfig
    from vlmsam.seg_token.model import SegTokenModel

    path, vlm, sam = spec.path, spec.vlm, spec.sam
    if vlm or sam:
        if path:
            raise CheckpointError("name either a [SEG] checkpoint or base --vlm/--sam models, not both")
        config = SegTokenConfig(vlm=vlm or SegTokenConfig.vlm, sam=sam or SegTokenConfig.sam)
        model, label = SegTokenModel.build(config).eval(), f"{config.vlm} + {config.sam}"
    else:
        if path in (None, "", DEFAULT_MODEL_NAME):
            path = bundled_default(DEFAULT_MODEL_NAME, "make tiny-model")
        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"{path}: no such model directory (give a trained checkpoint, or base models with --vlm/--sam)")
        if not path.is_dir():
            raise CheckpointError(f"{path}: is a file; a vlmsam model is a directory with vlmsam_config.json "
                                  "(a SAM checkpoint goes to --sam)")
        model = SegTokenModel.from_pretrained(path)
        label = DEFAULT_MODEL_NAME if path == DEFAULT_MODEL_DIR else str(path)
    if spec.dtype is not None:
        model.to(spec.dtype)
    if spec.device is not None:
        model.to(spec.device)
    return SegTokenSegmenter(model, label, spec.max_new_tokens or DEFAULT_MAX_NEW_TOKENS)
