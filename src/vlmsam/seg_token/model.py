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
from vlmsam.sam.backend import ImageEmbedding, SamBackend
from vlmsam.seg_token.config import SegTokenConfig
from vlmsam.seg_token.grounding import GroundingMixin
from vlmsam.seg_token.losses import answer_weighted_ce, dice_loss, sigmoid_bce_loss
from vlmsam.seg_token.parts import TrainablePartsMixin
from vlmsam.seg_token.persistence import (  # noqa: F401  (re-exported names)
    ADAPTER_DIR, CONFIG_NAME, TRAINABLE_WEIGHTS, PersistenceMixin, _apply_lora, _load_sam, _load_vlm, _resolve)
from vlmsam.seg_token.readout import ReadoutMixin
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


class SegTokenModel(TrainablePartsMixin, ReadoutMixin, GroundingMixin, PersistenceMixin, nn.Module):
    """The [SEG] model. Construction and the training forward live here; the trainable parts
    (parts.py), the [SEG] read-out (readout.py), the grounding loss (grounding.py) and
    persistence (persistence.py) are mixed in from files of their own."""

    def __init__(self, vlm: nn.Module, processor: VlmProcessor, sam: SamBackend, config: SegTokenConfig):
        super().__init__()
        if config.prompt_target not in ("region", "point"):  # checked here, not at the first training step
            raise ValueError(f"prompt_target must be 'region' or 'point', got {config.prompt_target!r}")
        self.config = config
        self.processor = processor
        self.vlm = vlm
        self.sam_backend = sam
        self.sam = sam.model  # registered, so .to() / parameters() / state_dict() see it
        hidden = self._text_config().hidden_size
        prompt_dim = sam.model.config.prompt_encoder_config.hidden_size
        self.projection = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, prompt_dim))
        self.projection.to(next(vlm.parameters()).dtype)
        self._grounding_attention: torch.Tensor | None = None
        self._watching = False  # the grounding head is hooked at the first training forward

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def build(cls, config: SegTokenConfig, *, base_dir: Path | None = None) -> SegTokenModel:
        """A fresh model from the base VLM and SAM named in ``config``: ``[SEG]`` added, LoRA applied,
        parts frozen as declared."""
        vlm = _load_vlm(config.vlm, base_dir)
        processor = VlmProcessor.from_pretrained(_resolve(config.vlm, base_dir))
        config.seg_token_id = processor.add_seg_token()
        if vlm.get_input_embeddings().weight.shape[0] < len(processor.tokenizer):
            vlm.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
        sam = SamBackend(_load_sam(config.sam, base_dir))
        model = cls(vlm, processor, sam, config)
        if config.use_lora:
            model.vlm = _apply_lora(vlm, config)
        model.apply_trainable()
        return model

    def _base_vlm(self) -> nn.Module:
        return self.vlm.get_base_model() if hasattr(self.vlm, "get_base_model") else self.vlm

    def _text_config(self):
        cfg = self._base_vlm().config
        return getattr(cfg, "text_config", cfg)

    # ---- training -------------------------------------------------------------------------------

    @property
    def collator(self) -> Collator:
        """Turns :class:`Sample` s into a :class:`Batch` for :meth:`forward` (use its ``prepare`` in
        DataLoader workers)."""
        if getattr(self, "_collator", None) is None:
            self._collator = Collator(self.processor, self.sam_backend.processor)
        return self._collator

    def encode_sam_batch(self, batch: Batch) -> list[ImageEmbedding]:
        """SAM image embeddings of the batch's images, in one encoder call (with gradients only when
        the SAM image encoder trains), or read from the SAM embedding cache when one is attached."""
        cache = getattr(self, "sam_cache", None)
        if cache is not None and not self.config.train_sam_image_encoder:
            return [self._cached_embedding(cache, s.image) for s in batch.samples]
        pixels = batch.sam_pixels.to(self.sam_backend.device, self.sam_backend.dtype)
        with torch.set_grad_enabled(self.config.train_sam_image_encoder and torch.is_grad_enabled()):
            emb = self.sam.vision_encoder(pixels).last_hidden_state
        return [ImageEmbedding(emb[b : b + 1], o, r) for b, (o, r) in enumerate(zip(batch.original_sizes, batch.input_sizes))]

    def _cached_embedding(self, cache, image) -> ImageEmbedding:
        if not isinstance(image, (str, Path)):  # in-memory images are not cached
            return self.sam_backend.encode(image)
        emb = cache.get(image)
        if emb is None:
            emb = self.sam_backend.encode(image)
            cache.put(image, emb)
        return ImageEmbedding(emb.embeddings.to(self.sam_backend.device, self.sam_backend.dtype), emb.original_size, emb.input_size)

    def vision_features(self, batch: Batch):
        """The VLM's vision features, computed once per image and shared by the image's rows."""
        features = self._base_vlm().model.get_image_features(batch.pixel_values, batch.image_grid_thw, return_dict=True)
        if len(batch.row_image) != len(batch) and getattr(features, "deepstack_features", None) is not None:
            # Qwen3-VL also feeds per-token deepstack features; repeat the pixels per row instead.
            return self._base_vlm().model.get_image_features(batch.row_pixel_values(), batch.image_grid_thw[batch.row_image],
                                                             return_dict=True)
        features.pooler_output = tuple(features.pooler_output[b] for b in batch.row_image.tolist())
        return features

    def forward(self, batch: Batch | list[Sample]) -> SegOutput:
        """Losses for a batch (CE on assistant tokens + BCE + Dice on masks)."""
        if not isinstance(batch, Batch):
            batch = self.collator(batch)
        device = next(self.vlm.parameters()).device
        batch = batch.to(device)
        if self.config.grounding_weight > 0 and self.training and not self._watching:
            self._watch_grounding_head()  # not before: inference keeps the faster attention
        out = self.vlm(
            **self.vlm_inputs(batch.input_ids),
            attention_mask=batch.attention_mask,
            mm_encoder_outputs={"image": self.vision_features(batch)},
            image_grid_thw=batch.image_grid_thw[batch.row_image],
            output_hidden_states=True,
        )
        hidden = out.hidden_states[-1]
        embeddings = self.encode_sam_batch(batch)
        bce = dice = aux = hidden.new_zeros((), dtype=torch.float32)
        n_masks = 0
        logits_out = []
        c = self.config
        for b in range(len(batch)):
            rows = range(batch.offsets[b], batch.offsets[b + 1])
            # Rows are the image's conversations in order, so the [SEG]s come in target order.
            states = torch.cat([hidden[r, batch.input_ids[r] == self.config.seg_token_id] for r in rows])
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
        if c.grounding_weight > 0 and self._grounding_attention is not None:
            grounding = self.grounding_loss(batch, self._grounding_attention)
            loss = loss + c.grounding_weight * grounding
        return SegOutput(loss, ce.detach(), bce.detach(), dice.detach(), logits_out,
                         aux.detach() if c.prompt_target_weight > 0 else None,
                         grounding.detach() if grounding is not None else None)

    def number_tokens(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(ids, values, openers)`` for ``number_sigma``: the tokens that are a whole number (sorted by
        id) with their values, and the tokens after which a number is a list value (ending in ``[`` or ``,``)."""
        if getattr(self, "_numbers", None) is None or self._numbers[0].device != torch.device(device):
            tokenizer = self.processor.tokenizer
            vocab = tokenizer.get_vocab()
            pairs = sorted((i, int(t)) for t, i in vocab.items() if t.isdigit() and t.isascii())
            openers = [i for i in vocab.values() if tokenizer.decode([i]).rstrip().endswith(("[", ","))]
            self._numbers = (torch.tensor([i for i, _ in pairs], device=device), torch.tensor([v for _, v in pairs], device=device),
                             torch.tensor(sorted(openers), device=device))
        return self._numbers

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
