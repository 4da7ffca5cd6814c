"""Selector ``llmseg``: LLM-Seg's trained selection, wired to a VLM that answers with ``[SEG]``.

The VLM answers as a ``[SEG]`` model does ("Sure, [SEG]."); the final-layer hidden state at each
``[SEG]`` is the query of :class:`~vlmsam.proposal_select.llmseg_head.SelectionHead`, which scores
the image's SAM proposals (precomputed by ``vlmsam proposals`` for training; generated when an image
is encoded at inference) on frozen DINOv2 features. The chosen proposals' union is the mask.

Trained by ``vlmsam train`` with ``model.model_type: proposal_select`` on the usual dataset mixture
(the same ``[SEG]`` answers as the ``seg_token`` design): language CE + alignment KL + weighted IoU
regression. The build, trainable parts, persistence and ``[SEG]`` read-out are the shared [SEG]-VLM base's
(``vlmsam.seg_vlm``). SAM is not part of the trained model: :class:`LlmSegCollator` reads each image's
stored proposals (``model.proposals``) and makes DINOv2's pixels in the DataLoader workers, so
``forward`` takes tensors only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vlmsam.data.collate import Batch, Collator
from vlmsam.data.sample import Sample
from vlmsam.engine.registry import CONFIG_NAME
from vlmsam.errors import VlmsamError
from vlmsam.metrics.iou import mask_iou
from vlmsam.proposal_select.config import LlmSegConfig
from vlmsam.proposal_select.llmseg_head import SelectionHead, select, selection_losses
from vlmsam.seg_vlm.losses import answer_weighted_ce
from vlmsam.seg_vlm.model import SegVlmModel
from vlmsam.vlm.processor import VlmProcessor

__all__ = ["DinoFeatures", "LlmSegCollator", "LlmSegConfig", "LlmSegModel", "LlmSegOutput"]
WEIGHTS = "llmseg.safetensors"


def dino_pixels(processor, image, size: int) -> torch.Tensor:
    """``(1, 3, size, size)``: DINOv2's input for a whole image resized to a square (no centre crop, so
    every proposal pixel has a feature under it)."""
    return processor(images=image.convert("RGB"), do_center_crop=False, size={"height": size, "width": size},
                     return_tensors="pt").pixel_values


class DinoFeatures(nn.Module):
    """Frozen DINOv2 patch features of a whole image: ``(C, s/p, s/p)`` for an ``s x s`` resize."""

    def __init__(self, model, processor, size: int):
        super().__init__()
        self.model, self.processor, self.size = model.eval(), processor, size
        for p in self.model.parameters():
            p.requires_grad_(False)

    @classmethod
    def load(cls, source: str, size: int) -> DinoFeatures:
        from transformers import AutoImageProcessor, Dinov2Model

        from vlmsam.hub import check_available

        check_available(source, "DINOv2")
        return cls(Dinov2Model.from_pretrained(source), AutoImageProcessor.from_pretrained(source), size)

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(1, 3, s, s)`` pixels (:func:`dino_pixels`) -> ``(C, s/p, s/p)`` patch features."""
        param = next(self.model.parameters())
        hidden = self.model(pixel_values=pixels.to(param.device, param.dtype)).last_hidden_state[0]
        side = self.size // self.model.config.patch_size
        return hidden[1:1 + side * side].T.reshape(-1, side, side)  # drop CLS (and any register tokens)

    def forward(self, image) -> torch.Tensor:
        return self.encode(dino_pixels(self.processor, image, self.size))


class LlmSegCollator(Collator):
    """The usual collator (no SAM pixels) plus, per sample with targets, its stored top-K proposals at the
    image's size (``features["proposals"]``, ``(K, H, W) bool``) and DINOv2's pixels
    (``features["dino_pixels"]``); both are made in the DataLoader workers."""

    def __init__(self, processor: VlmProcessor, config: LlmSegConfig, dino_processor):
        super().__init__(processor, None)
        self.config, self.dino_processor = config, dino_processor
        self._reader = self._keys = None  # opened on first use, in each worker

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_reader": None, "_keys": None}  # an open store goes to no other process

    def _stored(self, image: str):
        from vlmsam.proposals.store import ProposalReader

        if self._reader is None:
            if not self.config.proposals:
                raise VlmsamError("model.proposals is not set: run `vlmsam proposals` over the training datasets and "
                                  "name its --out directory in model.proposals")
            self._reader = ProposalReader(self.config.proposals, k=self.config.max_proposals)
            self._keys = {}
            for key in self._reader.where:
                self._keys.setdefault(Path(key).name, []).append(key)
        keys = [k for k in self._keys.get(Path(image).name, []) if image == k or image.endswith("/" + k)]
        if not keys:
            raise VlmsamError(f"{image}: no stored proposals in {self.config.proposals}; run `vlmsam proposals` over the "
                              "same datasets as training")
        return self._reader[keys[0]]

    def features(self, sample: Sample, image) -> dict[str, torch.Tensor]:
        size = (image.height, image.width)
        if not len(sample.masks):  # nothing to select: no proposals read, no DINOv2 input made
            return {"proposals": torch.zeros((0, *size), dtype=torch.bool), "dino_pixels": torch.zeros(0)}
        masks = torch.from_numpy(self._stored(str(sample.image)).masks)
        if tuple(masks.shape[-2:]) != size:
            masks = F.interpolate(masks[None].float(), size=size, mode="nearest")[0] > 0.5
        return {"proposals": masks, "dino_pixels": dino_pixels(self.dino_processor, image, self.config.dino_size)}


@dataclass
class LlmSegOutput:
    loss: torch.Tensor
    ce_loss: torch.Tensor
    alignment_loss: torch.Tensor
    iou_loss: torch.Tensor
    selected_iou: torch.Tensor  # mean true IoU of the best-scored proposal per [SEG] (a training read-out)

    def losses(self) -> dict[str, torch.Tensor]:
        return {"loss": self.loss, "ce_loss": self.ce_loss, "alignment_loss": self.alignment_loss,
                "iou_loss": self.iou_loss, "selected_iou": self.selected_iou}


class LlmSegModel(SegVlmModel):
    """The shared [SEG]-VLM base with frozen DINOv2 and LLM-Seg's selection head."""

    WEIGHTS = WEIGHTS
    ALWAYS_SAVED = ("head",)  # it exists in no base model

    def __init__(self, vlm: nn.Module, processor: VlmProcessor, dino: DinoFeatures, config: LlmSegConfig):
        super().__init__(vlm, processor, config)
        self.dino = dino
        self.head = SelectionHead(dino.dim, self._text_config().hidden_size, config.head_dim, config.head_depth,
                                  config.head_heads, config.head_geometry)
        self._collator = None

    @classmethod
    def build(cls, config: LlmSegConfig) -> LlmSegModel:
        vlm, processor = cls.load_vlm(config)
        return cls(vlm, processor, DinoFeatures.load(config.dinov2, config.dino_size), config).finish_build()

    def _parts(self) -> dict[str, nn.Module]:
        vlm = self._vlm_parts()
        return {"language_model": vlm["language_model"], "lm_head": vlm["lm_head"], "embed_tokens": vlm["embed_tokens"],
                "head": self.head}

    @property
    def collator(self) -> LlmSegCollator:
        if self._collator is None:
            self._collator = LlmSegCollator(self.processor, self.config, self.dino.processor)
        return self._collator

    # ---- training -------------------------------------------------------------------------------

    def forward(self, batch: Batch | list[Sample]) -> LlmSegOutput:
        if not isinstance(batch, Batch):
            batch = self.collator(batch)
        device = next(self.vlm.parameters()).device
        batch = batch.to(device)
        out = self.run_vlm(batch)
        ce = answer_weighted_ce(out.logits, batch.labels, 1.0)  # the usual causal-LM CE
        hidden, dtype = out.hidden_states[-1], self.head.feature_proj.weight.dtype
        selection, alignment, regression, chosen, n = (hidden.new_zeros((), dtype=torch.float32) for _ in range(5))
        for b in range(len(batch)):
            targets, proposals = batch.masks[b], batch.features["proposals"][b]
            if not len(targets) or not len(proposals):
                continue
            features = self.dino.encode(batch.features["dino_pixels"][b]).to(dtype)
            for state, target in zip(self.seg_states(hidden, batch, b), targets):
                gt = mask_iou(proposals, target == 1)
                iou, emb, query = self.head(features, proposals, state.to(dtype))
                parts = selection_losses(iou.float(), emb.float(), query.float(), gt.float())
                selection = selection + parts["loss"]
                alignment, regression = alignment + parts["alignment_loss"], regression + parts["iou_loss"]
                chosen = chosen + gt[iou.argmax()].detach()
                n = n + 1
        n = n.clamp_min(1)
        loss = self.config.ce_weight * ce + self.config.selection_weight * selection / n
        return LlmSegOutput(loss, ce.detach(), alignment / n, regression / n, (chosen / n).detach())

    # ---- inference ------------------------------------------------------------------------------

    @torch.no_grad()
    def choose(self, features: torch.Tensor, proposals: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the proposals one ``[SEG]`` state means, and every proposal's predicted IoU."""
        dtype = self.head.feature_proj.weight.dtype
        iou, _, _ = self.head(features.to(dtype), proposals, state.to(dtype))
        return select(iou, self.config.select_threshold, self.config.select_single), iou

    # ---- persistence ----------------------------------------------------------------------------

    def save_pretrained(self, out_dir: str | Path, *, amg: dict | None = None) -> Path:
        """``amg``: the proposal settings to record with the checkpoint (default: the config's)."""
        from dataclasses import replace

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (self.config if amg is None else replace(self.config, amg=dict(amg))).save(out / CONFIG_NAME)
        self.save_weights(out)
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path) -> LlmSegModel:
        from vlmsam.engine.registry import read_config

        path = Path(path)
        config = LlmSegConfig.from_dict(read_config(path))
        for name in ("vlm", "sam", "dinov2"):  # a bundle names its parts relative to itself
            if getattr(config, name) and (path / getattr(config, name)).is_dir():
                setattr(config, name, str(path / getattr(config, name)))
        vlm, processor = cls.load_checkpoint_vlm(config, path)
        return cls(vlm, processor, DinoFeatures.load(config.dinov2, config.dino_size), config).finish_loading(path)
