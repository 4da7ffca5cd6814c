"""The ``[SEG]``-token segmenter (LISA / Qwen-SAM): a VLM answers with ``[SEG]``; the final-layer
hidden state of each ``[SEG]`` *input* position, projected into SAM's prompt space, is a sparse
prompt for SAM's mask decoder. One ``[SEG]``, one mask, in order.

Training and generation read the same state (the final layer at the ``[SEG]`` input position of a
teacher-forced pass, or of the generation step in which the emitted ``[SEG]`` is fed back in), and
both turn it into masks through :meth:`SegTokenModel.masks_from_states`, so generating and then
teacher-forcing the same tokens gives the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vlmsam.data.collate import Batch, Collator
from vlmsam.data.sample import Sample
from vlmsam.errors import CheckpointError
from vlmsam.sam.backend import ImageEmbedding, SamBackend
from vlmsam.sam.embedding_cache import SamEmbeddingCache
from vlmsam.seg_token.config import SegTokenConfig
from vlmsam.seg_token.losses import answer_weighted_ce, dice_loss, sigmoid_bce_loss
from vlmsam.seg_token.persistence import SegTokenPersistence
from vlmsam.seg_token.readout import ReadoutMixin
from vlmsam.seg_vlm.grounding import GroundingMixin
from vlmsam.seg_vlm.model import SegVlmModel
from vlmsam.seg_vlm.persistence import load_sam
from vlmsam.vlm.processor import VlmProcessor


@dataclass
class SegOutput:
    loss: torch.Tensor
    ce_loss: torch.Tensor
    bce_loss: torch.Tensor
    dice_loss: torch.Tensor
    mask_logits: list[torch.Tensor]  # per image, (N_b, H_b, W_b) in original pixels
    target_loss: torch.Tensor | None = None  # only with prompt_target_weight > 0
    grounding_loss: torch.Tensor | None = None  # only with grounding_weight > 0

    def losses(self) -> dict[str, torch.Tensor]:
        """The named losses the trainer logs; ``loss`` is the one it optimises."""
        named = {"loss": self.loss, "ce_loss": self.ce_loss, "bce_loss": self.bce_loss, "dice_loss": self.dice_loss,
                 "target_loss": self.target_loss, "grounding_loss": self.grounding_loss}
        return {k: v for k, v in named.items() if v is not None}


class SegTokenModel(ReadoutMixin, GroundingMixin, SegTokenPersistence, SegVlmModel):
    """The [SEG] model: the shared [SEG]-VLM base (seg_vlm) with SAM and a projection into SAM's prompt
    space. Construction and the training forward live here; the [SEG] read-out into SAM (readout.py) and
    the checkpoint format (persistence.py) in files of their own.

    Args:
        sam_cache: a :class:`SamEmbeddingCache` to read frozen SAM image embeddings from instead of running
            SAM's image encoder (or :meth:`use_sam_cache` later); ``None``: encode every batch.
    """

    ALWAYS_SAVED = ("projection",)  # it exists in no base model

    def __init__(self, vlm: nn.Module, processor: VlmProcessor, sam: SamBackend, config: SegTokenConfig,
                 sam_cache: SamEmbeddingCache | None = None):
        super().__init__(vlm, processor, config)
        if config.prompt_target not in ("region", "point"):  # checked here, not at the first training step
            raise ValueError(f"prompt_target must be 'region' or 'point', got {config.prompt_target!r}")
        self.sam_backend = sam
        self.sam = sam.model  # registered, so .to() / parameters() / state_dict() see it
        hidden = self._text_config().hidden_size
        prompt_dim = sam.model.config.prompt_encoder_config.hidden_size
        self.projection = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, prompt_dim))
        self.projection.to(next(vlm.parameters()).dtype)
        self.sam_cache = None
        self._collator = None
        if sam_cache is not None:
            self.use_sam_cache(sam_cache)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def build(cls, config: SegTokenConfig, *, base_dir: Path | None = None) -> SegTokenModel:
        """A fresh model from the base VLM and SAM named in ``config``: ``[SEG]`` added, LoRA applied,
        parts frozen as declared."""
        vlm, processor = cls.load_vlm(config, base_dir)
        return cls(vlm, processor, SamBackend(load_sam(config.sam, base_dir)), config).finish_build()

    def _parts(self) -> dict[str, nn.Module]:
        """SAM's two positional-embedding copies are one tied tensor, so the prompt encoder covers both."""
        vlm = self._vlm_parts()
        return {"language_model": vlm["language_model"], "lm_head": vlm["lm_head"], "embed_tokens": vlm["embed_tokens"],
                "projection": self.projection, "sam_mask_decoder": self.sam.mask_decoder, "vision_tower": vlm["vision_tower"],
                "sam_image_encoder": self.sam.vision_encoder, "sam_prompt_encoder": self.sam.prompt_encoder}

    # ---- training -------------------------------------------------------------------------------

    @property
    def collator(self) -> Collator:
        """Turns :class:`Sample` s into a :class:`Batch` for :meth:`forward` (use its ``prepare`` in
        DataLoader workers); no SAM pixels once the SAM embedding cache is in use."""
        if self._collator is None:
            self._collator = Collator(self.processor, None if self.sam_cache is not None else self.sam_backend.processor)
        return self._collator

    def use_sam_cache(self, cache: SamEmbeddingCache) -> None:
        """Read frozen SAM image embeddings from ``cache`` (filled with :meth:`SamEmbeddingCache.fill`)
        instead of running SAM's image encoder; the collator stops preparing SAM pixels."""
        if self.config.train_sam_image_encoder:
            raise CheckpointError("train.sam_embedding_cache needs a frozen SAM image encoder "
                                  "(model.train_sam_image_encoder=false)")
        self.sam_cache = cache
        if self._collator is not None:
            self._collator.drop_sam_pixels()

    def encode_sam_batch(self, batch: Batch) -> list[ImageEmbedding]:
        """SAM image embeddings of the batch's images, in one encoder call (with gradients only when
        the SAM image encoder trains), or read from the SAM embedding cache when one is in use."""
        if self.sam_cache is not None:
            return [self._cached_embedding(s.image) for s in batch.samples]
        pixels = batch.sam_pixels.to(self.sam_backend.device, self.sam_backend.dtype)
        with torch.set_grad_enabled(self.config.train_sam_image_encoder and torch.is_grad_enabled()):
            emb = self.sam.vision_encoder(pixels).last_hidden_state
        return [ImageEmbedding(emb[b : b + 1], o, r) for b, (o, r) in enumerate(zip(batch.original_sizes, batch.input_sizes))]

    def _cached_embedding(self, image) -> ImageEmbedding:
        if not isinstance(image, (str, Path)):  # in-memory images are not cached
            return self.sam_backend.encode(image)
        emb = self.sam_cache.get(image)
        if emb is None:
            emb = self.sam_backend.encode(image)
            self.sam_cache.put(image, emb)
        return ImageEmbedding(emb.embeddings.to(self.sam_backend.device, self.sam_backend.dtype), emb.original_size, emb.input_size)

    def forward(self, batch: Batch | list[Sample]) -> SegOutput:
        """Losses for a batch (CE on assistant tokens + BCE + Dice on masks)."""
        if not isinstance(batch, Batch):
            batch = self.collator(batch)
        device = next(self.vlm.parameters()).device
        batch = batch.to(device)
        c = self.config
        grounding_on = c.grounding_weight > 0 and self.training and torch.is_grad_enabled()
        if grounding_on:
            self.use_eager_attention()  # not before: inference keeps the faster attention
        out = self.run_vlm(batch, output_attentions=grounding_on)
        hidden = out.hidden_states[-1]
        embeddings = self.encode_sam_batch(batch)
        bce = dice = aux = hidden.new_zeros((), dtype=torch.float32)
        n_masks = 0
        logits_out = []
        for b in range(len(batch)):
            states = self.seg_states(hidden, batch, b)
            targets = batch.masks[b]
            logits, _ = self.masks_from_states(states, embeddings[b])
            logits_out.append(logits)
            if len(targets):
                bce = bce + sigmoid_bce_loss(logits, targets)
                dice = dice + dice_loss(logits, targets)
                if c.prompt_target_weight > 0:
                    aux = aux + self.prompt_target_loss(states, targets, embeddings[b])
                n_masks += len(targets)
        bce = bce / (n_masks + 1e-8)
        dice = dice / (n_masks + 1e-8)
        numbers = self.number_tokens(out.logits.device) if c.number_sigma > 0 else None
        ce = answer_weighted_ce(out.logits, batch.labels, c.answer_start_weight,  # weight 1, sigma 0: the usual causal-LM CE
                                numbers and numbers[:2], c.number_sigma, numbers and numbers[2])
        loss = c.ce_weight * ce + c.bce_weight * bce + c.dice_weight * dice
        aux = aux / (n_masks + 1e-8)
        if c.prompt_target_weight > 0:
            loss = loss + c.prompt_target_weight * aux
        grounding = None
        if grounding_on:
            grounding = self.grounding_loss(batch, self.grounding_attention(out))
            loss = loss + c.grounding_weight * grounding
        return SegOutput(loss, ce.detach(), bce.detach(), dice.detach(), logits_out,
                         aux.detach() if c.prompt_target_weight > 0 else None,
                         grounding.detach() if grounding is not None else None)

    # ---- inference (the segmenter contract lives in seg_token/segmenter.py) -----------------------

    @torch.no_grad()
    def teacher_forced_states(self, prefix, prompt: str, answer_ids: torch.Tensor) -> torch.Tensor:
        """[SEG] states from one forward pass over prompt + ``answer_ids`` (the training read-out) for an
        image whose :class:`~vlmsam.vlm.generation.VisionPrefix` is ``prefix``."""
        from vlmsam.vlm.special_tokens import escape_special_tokens

        prompt = escape_special_tokens(prompt, self.processor.tokenizer)  # a request holds user text
        enc = self.processor.encode([(prompt, None)], image_inputs=(prefix.pixel_values, prefix.grid, prefix.n_tokens))
        ids = torch.cat([enc.input_ids.to(answer_ids.device), answer_ids])[None].to(prefix.grid.device)
        out = self.vlm(**self.vlm_inputs(ids), pixel_values=prefix.pixel_values, image_grid_thw=prefix.grid,
                       output_hidden_states=True)
        positions = (ids[0] == self.config.seg_token_id).nonzero().flatten()
        return out.hidden_states[-1][0, positions]
