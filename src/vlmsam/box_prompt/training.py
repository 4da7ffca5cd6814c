"""Training the ``box_prompt`` design: the VLM learns to answer the box_prompt request in its grounding
format (boxes and points as JSON), with the shared [SEG]-VLM base (``vlmsam.seg_vlm``: build, LoRA,
trainable parts) and its grounding-attention loss, here over each coordinate's edge of the object.

A checkpoint is a box_prompt checkpoint (``vlmsam segment --model CKPT`` loads it as this design): the
segmenter's config, the VLM in full under ``vlm/`` (LoRA merged into a copy) and SAM by reference; with
LoRA the adapter is kept beside it, so that training resumes exactly.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vlmsam.box_prompt.training_config import BoxPromptTrainConfig
from vlmsam.data.collate import Batch, Collator
from vlmsam.data.sample import Sample
from vlmsam.engine.registry import CONFIG_NAME
from vlmsam.errors import CheckpointError
from vlmsam.sam.backend import SamBackend
from vlmsam.seg_vlm.grounding import GroundingMixin
from vlmsam.seg_vlm.losses import answer_weighted_ce
from vlmsam.seg_vlm.model import SegVlmModel
from vlmsam.seg_vlm.persistence import load_sam, portable
from vlmsam.vlm.processor import VlmProcessor

VLM_DIR = "vlm"


@dataclass
class BoxPromptOutput:
    loss: torch.Tensor
    ce_loss: torch.Tensor
    grounding_loss: torch.Tensor | None = None  # only with grounding_weight > 0

    def losses(self) -> dict[str, torch.Tensor]:
        named = {"loss": self.loss, "ce_loss": self.ce_loss, "grounding_loss": self.grounding_loss}
        return {k: v for k, v in named.items() if v is not None}


class BoxPromptTrainingModel(GroundingMixin, SegVlmModel):
    """The VLM being taught, and the frozen SAM that draws its answers at validation."""

    def __init__(self, vlm: nn.Module, processor: VlmProcessor, sam: SamBackend, config: BoxPromptTrainConfig):
        if config.use_lora and config.train_language_model:
            raise CheckpointError("box_prompt: train_language_model trains every language weight; turn use_lora off")
        super().__init__(vlm, processor, config)
        self.sam_backend = sam
        self.sam = sam.model  # registered, so .to() moves it; no part of it trains
        self._collator = None

    @classmethod
    def build(cls, config: BoxPromptTrainConfig) -> BoxPromptTrainingModel:
        vlm, processor = cls.load_vlm(config, seg_token=False)  # grounding answers hold no [SEG]
        config.seg_token_id = processor.seg_token_id if processor.seg_token_id is not None else -1
        return cls(vlm, processor, SamBackend(load_sam(config.sam)), config).finish_build()

    def _parts(self) -> dict[str, nn.Module]:
        return self._vlm_parts()

    @property
    def collator(self) -> Collator:
        if self._collator is None:
            self._collator = Collator(self.processor, None)  # no SAM pixels: SAM does not train
        return self._collator

    def forward(self, batch: Batch | list[Sample]) -> BoxPromptOutput:
        """The answers' CE (decision token weighted, numbers ordinal when asked) + the grounding-attention loss."""
        if not isinstance(batch, Batch):
            batch = self.collator(batch)
        batch = batch.to(next(self.vlm.parameters()).device)
        c = self.config
        grounding_on = c.grounding_weight > 0 and self.training and torch.is_grad_enabled()
        if grounding_on:
            self.use_eager_attention()  # not before: inference keeps the faster attention
        out = self.run_vlm(batch, output_attentions=grounding_on)
        numbers = self.number_tokens(out.logits.device) if c.number_sigma > 0 else None
        ce = answer_weighted_ce(out.logits, batch.labels, c.answer_start_weight, numbers and numbers[:2], c.number_sigma,
                                numbers and numbers[2])
        if not grounding_on:
            return BoxPromptOutput(ce, ce.detach())
        grounding = self.grounding_loss(batch, self.grounding_attention(out))
        return BoxPromptOutput(ce + c.grounding_weight * grounding, ce.detach(), grounding.detach())

    # ---- the grounding answer's queries (seg_vlm/grounding.py asks for them) ---------------------

    def answer_objects(self, batch: Batch, b: int, grid: tuple[int, int]) -> list[torch.Tensor] | None:
        """Per conversation, the ``(objects, cells)`` shares of the objects its grounding answer names
        (``meta["box_objects"]``, written with the answers by ``data.grounding_answers``)."""
        objects = batch.samples[b].meta.get("box_objects") if batch.samples else None
        if objects is None:
            return None
        device = batch.input_ids.device
        return [F.adaptive_avg_pool2d(torch.as_tensor(o == 1, dtype=torch.float32, device=device)[:, None], grid).flatten(1)
                for o in objects]

    def coordinate_queries(self, ids, labels, objects, grid) -> list[tuple[int, torch.Tensor]]:
        """Grounding answers (``meta["box_objects"]``): the token that predicts each digit of a box's
        ``x1, y1, x2, y2`` looks at the object's leftmost / top / rightmost / bottom cells, and of its
        point at all the object's cells, so the number can be read from where the head looks. The
        answer's numbers are runs of number tokens right after ``[`` or ``,`` (list values, not the 2 of
        ``bbox_2d``), six per object (the last ones); an answer with fewer gets none."""
        numbers, _, openers = self.number_tokens(ids.device)
        digits = torch.isin(ids, numbers) & (labels != -100)
        runs, p = [], 0
        positions = torch.nonzero(digits)[:, 0].tolist()
        while p < len(positions):
            q = p
            while q + 1 < len(positions) and positions[q + 1] == positions[q] + 1:
                q += 1
            if bool(torch.isin(ids[positions[p] - 1], openers)):
                runs.append(positions[p:q + 1])
            p = q + 1
        if len(runs) < 6 * len(objects):
            return []
        runs = runs[len(runs) - 6 * len(objects):]  # a caption before the JSON may hold numbers too
        rows, cols = grid
        out = []
        for o, cells in enumerate(objects):
            s = cells.view(rows, cols)
            ys, xs = torch.nonzero(s > 0, as_tuple=True)
            col = torch.arange(cols, device=s.device)[None].expand(rows, cols)
            row = torch.arange(rows, device=s.device)[:, None].expand(rows, cols)
            edges = [s * (col == xs.min()), s * (row == ys.min()), s * (col == xs.max()), s * (row == ys.max()), s, s]
            for run, wanted in zip(runs[6 * o:6 * o + 6], edges):
                out += [(t - 1, wanted.flatten()) for t in run]
        return out

    # ---- persistence: a box_prompt checkpoint -----------------------------------------------------

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """The box_prompt segmenter's config (and this training config under ``training``), the VLM in
        full with its processor under ``vlm/`` and, with LoRA, the adapter beside it."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        c = self.config
        vlm = copy.deepcopy(self.vlm).merge_and_unload() if c.use_lora else self._base_vlm()  # this model keeps its LoRA
        vlm.save_pretrained(out / VLM_DIR)
        self.processor.save_pretrained(out / VLM_DIR)
        if c.use_lora:
            self.vlm.save_pretrained(str(out / "adapter"))
        training = {**asdict(c), "vlm": portable(c.vlm, out), "sam": portable(c.sam, out)}
        config = {"model_type": "vlmsam_box_prompt", "vlm": VLM_DIR, "sam": training["sam"], "style": c.style,
                  "union": c.union, "multimask": c.multimask, "prompt": c.prompt, "max_new_tokens": c.max_new_tokens,
                  "training": training}
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        return out

    def read_trainable(self, path: Path) -> dict[str, torch.Tensor]:
        """The trained parts' weights, read back from the checkpoint's full VLM (``vlm/``)."""
        from vlmsam.vlm.runtime import load_vlm_model

        saved = load_vlm_model(str(path / VLM_DIR))
        theirs = {"language_model": saved.model.language_model, "lm_head": saved.get_output_embeddings(),
                  "embed_tokens": saved.get_input_embeddings(), "vision_tower": saved.model.visual}
        return {f"{name}.{k}": v for name, module in theirs.items() if self.config.trainable(name)
                for k, v in module.state_dict().items() if self._own(name, k)}


def segmenter(model: BoxPromptTrainingModel):
    """The box_prompt segmenter over the model being trained (validation by generation)."""
    from vlmsam.box_prompt.segmenter import BoxPromptSegmenter
    from vlmsam.vlm.runtime import VlmRuntime

    c = model.config
    return BoxPromptSegmenter(VlmRuntime(model.vlm, model.processor), model.sam_backend, style=c.style, union=c.union,
                              multimask=c.multimask, max_new_tokens=c.max_new_tokens, prompt=c.prompt)
