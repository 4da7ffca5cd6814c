"""The base of every model that fine-tunes the VLM: build (VLM + processor, ``[SEG]`` added, LoRA), the
declared trainable parts (parts.py), persistence (persistence.py) and the ``[SEG]`` read-out.

A subclass adds what its design puts on top (SAM and a projection for ``seg_token``, a selection head
for ``llmseg``, nothing for ``box_prompt``), names its parts in ``_parts()`` and writes its forward.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vlmsam.data.collate import Batch
from vlmsam.errors import CheckpointError
from vlmsam.seg_vlm.parts import TrainablePartsMixin
from vlmsam.seg_vlm.persistence import PersistenceMixin, resolve
from vlmsam.vlm.processor import VlmProcessor


class SegVlmModel(TrainablePartsMixin, PersistenceMixin, nn.Module):
    """Args:
        vlm: the VLM (``...ForConditionalGeneration``, peft-wrapped once LoRA is applied).
        processor: its :class:`VlmProcessor` (its tokenizer knows ``[SEG]`` when the design uses it).
        config: the design's config (``vlm``, ``seg_token_id``, ``use_lora``, ``lora_*``, ``train_*``).
    """

    def __init__(self, vlm: nn.Module, processor: VlmProcessor, config):
        super().__init__()
        self.config, self.processor, self.vlm = config, processor, vlm

    # ---- construction ---------------------------------------------------------------------------

    @staticmethod
    def load_vlm(config, base_dir: Path | None = None, *, seg_token: bool = True) -> tuple[nn.Module, VlmProcessor]:
        """The base VLM and processor ``config.vlm`` names, with ``[SEG]`` added (its id recorded in
        ``config.seg_token_id``) unless ``seg_token`` is False."""
        from vlmsam.vlm.runtime import load_vlm_model

        source = resolve(config.vlm, base_dir)
        vlm, processor = load_vlm_model(source), VlmProcessor.from_pretrained(source)
        if seg_token:
            config.seg_token_id = processor.add_seg_token()
        if vlm.get_input_embeddings().weight.shape[0] < len(processor.tokenizer):
            vlm.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
        return vlm, processor

    @staticmethod
    def load_checkpoint_vlm(config, path: Path) -> tuple[nn.Module, VlmProcessor]:
        """The base VLM a checkpoint's config names and the checkpoint's own processor (its tokenizer
        holds ``[SEG]`` at the id the config records)."""
        from vlmsam.vlm.runtime import load_vlm_model

        vlm = load_vlm_model(resolve(config.vlm, path))
        processor = VlmProcessor.from_pretrained(path)
        if processor.seg_token_id != config.seg_token_id:
            raise CheckpointError(f"{path}: the tokenizer's [SEG] id {processor.seg_token_id} differs from the config's "
                                  f"{config.seg_token_id}")
        if vlm.get_input_embeddings().weight.shape[0] != len(processor.tokenizer):
            vlm.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
        return vlm, processor

    def finish_build(self):
        """LoRA applied when the config asks for it, then exactly the declared parts trainable."""
        if self.config.use_lora:
            from vlmsam.vlm.lora import apply_lora

            c = self.config
            self.vlm = apply_lora(self.vlm, r=c.lora_r, alpha=c.lora_alpha, dropout=c.lora_dropout, targets=c.lora_targets)
        self.apply_trainable()
        return self

    def _base_vlm(self) -> nn.Module:
        return self.vlm.get_base_model() if hasattr(self.vlm, "get_base_model") else self.vlm

    def _text_config(self):
        cfg = self._base_vlm().config
        return getattr(cfg, "text_config", cfg)

    # ---- the [SEG] read-out ---------------------------------------------------------------------

    def vlm_inputs(self, input_ids: torch.Tensor, **kwargs) -> dict:
        return dict(input_ids=input_ids, mm_token_type_ids=self.processor.mm_token_type_ids(input_ids), **kwargs)

    def seg_states(self, hidden: torch.Tensor, batch: Batch, b: int) -> torch.Tensor:
        """``(N, hidden)``: the final-layer states at every ``[SEG]`` of image ``b``'s rows, in target order
        (rows are the image's conversations in order)."""
        rows = range(batch.offsets[b], batch.offsets[b + 1])
        return torch.cat([hidden[r, batch.input_ids[r] == self.config.seg_token_id] for r in rows])

    def vision_features(self, batch: Batch):
        """The VLM's vision features, computed once per image and shared by the image's rows."""
        base = self._base_vlm().model
        features = base.get_image_features(batch.pixel_values, batch.image_grid_thw, return_dict=True)
        if len(batch.row_image) != len(batch) and getattr(features, "deepstack_features", None) is not None:
            # Qwen3-VL also feeds per-token deepstack features; repeat the pixels per row instead.
            return base.get_image_features(batch.row_pixel_values(), batch.image_grid_thw[batch.row_image], return_dict=True)
        features.pooler_output = tuple(features.pooler_output[b] for b in batch.row_image.tolist())
        return features

    def run_vlm(self, batch: Batch, *, output_attentions: bool = False):
        """A teacher-forced pass over the batch's rows (each image's vision features computed once), with
        every layer's hidden states (and attention weights when asked)."""
        extra = {"output_attentions": True} if output_attentions else {}
        return self.vlm(**self.vlm_inputs(batch.input_ids), attention_mask=batch.attention_mask,
                        mm_encoder_outputs={"image": self.vision_features(batch)},
                        image_grid_thw=batch.image_grid_thw[batch.row_image], output_hidden_states=True, **extra)
