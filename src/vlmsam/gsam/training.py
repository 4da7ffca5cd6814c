"""Fine-tuning SAM 3 on phrase samples through ``vlmsam train`` (``model.model_type: grounded``).

Each training image brings several noun phrases (``vlmsam.data.phrases``: every instance each names,
and phrases naming nothing); the ViT runs once per image and its features are shared by the image's
phrases, as at inference. Losses are SAM 3's (``vlmsam.sam.sam3_losses``). A checkpoint is a
``grounded`` segmenter whose one model is the SAM 3, so ``vlmsam segment --model RUN/checkpoint-N``
and validation run it through the same contract as every design.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlmsam.data.phrases import VOCABULARY, phrases_for
from vlmsam.data.sample import BadSample, Sample
from vlmsam.data.synth import visible_masks
from vlmsam.errors import CheckpointError
from vlmsam.gsam.sam3_lora import add_lora, load_lora, merged_state, save_lora
from vlmsam.gsam.training_config import Sam3TrainConfig
from vlmsam.io.images import load_image
from vlmsam.sam.sam3_backend import TEXT_LENGTH, Sam3Backend, sam3_pixels
from vlmsam.sam.sam3_losses import masks_to_boxes, one_to_many_losses, sam3_losses

PARTS = {"vision": ("vision_encoder",), "text": ("text_encoder", "text_projection"),
         "detector": ("geometry_encoder", "detr_encoder", "detr_decoder", "dot_product_scoring"),
         "mask_decoder": ("mask_decoder",)}


@dataclass
class PhraseItem:
    """One image ready for SAM 3: its pixels, its phrases and each phrase's targets at the mask head's size."""

    pixels: torch.Tensor
    phrases: list[str]
    targets: list[dict]
    skipped: list = field(default_factory=list)


@dataclass
class PhraseBatch:
    pixels: torch.Tensor  # (B, 3, S, S)
    image_of: torch.Tensor  # (P,) the image of each phrase
    input_ids: torch.Tensor  # (P, 32)
    attention_mask: torch.Tensor
    targets: list[dict]
    skipped: list = field(default_factory=list)


class PhraseCollator:
    """``prepare(sample)`` in the loader's workers (decode, phrases, targets); ``__call__`` tokenizes and stacks."""

    def __init__(self, backend: Sam3Backend, config: Sam3TrainConfig):
        self.size, self.tokenizer, self.config = backend.size, backend.tokenizer, config
        self.mask_size = backend.model.config.vision_config.backbone_feature_sizes[0][0]

    def prepare(self, sample: Sample, image=None) -> PhraseItem:
        """The image's pixels and its phrases' targets: a loader's ``phrase_targets`` (COCO instances), or
        phrases made from a synthetic scene's ``scene`` list."""
        image = load_image(sample.image if image is None else image)
        if sample.meta.get("phrase_targets") is not None:
            pairs = [(text, torch.from_numpy(np.asarray(m, bool))) for text, m in sample.meta["phrase_targets"]]
        elif sample.meta.get("scene"):
            visible = visible_masks(sample.meta["scene"], image.height, image.width)
            phrases = phrases_for(sample.name or sample.where, sample.meta["scene"], self.config.phrases_per_image,
                                  self.config.negative_rate)
            pairs = [(p.text, torch.from_numpy(visible[list(p.instances)])) for p in phrases]
        else:
            raise BadSample(sample.where, "no phrases to train SAM 3 on: use a coco_instances dataset or synthetic scenes "
                                          "(vlmsam data synth)")
        targets = [self._target(masks.reshape(-1, image.height, image.width)) for _, masks in pairs]
        return PhraseItem(sam3_pixels(image, self.size)[0], [text for text, _ in pairs], targets, sample.meta.get("skipped", []))

    def _target(self, masks: torch.Tensor) -> dict:
        masks = masks[masks.reshape(len(masks), -1).any(1)] if len(masks) else masks  # a shape hidden entirely is none
        m = self.mask_size
        small = F.interpolate(masks[None].float(), size=(m, m), mode="bilinear", align_corners=False, antialias=True)[0] \
            if len(masks) else torch.zeros((0, m, m))
        return {"boxes": masks_to_boxes(masks), "masks": small}

    def __call__(self, items: list) -> PhraseBatch:
        items = [it if isinstance(it, PhraseItem) else self.prepare(it) for it in items]
        texts = [p for it in items for p in it.phrases]
        enc = self.tokenizer(texts, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt")
        image_of = torch.tensor([i for i, it in enumerate(items) for _ in it.phrases], dtype=torch.long)
        return PhraseBatch(torch.stack([it.pixels for it in items]), image_of, enc["input_ids"], enc["attention_mask"],
                           [t for it in items for t in it.targets], [s for it in items for s in it.skipped])


@dataclass
class PhraseOutput:
    named: dict

    def losses(self) -> dict[str, torch.Tensor]:
        return self.named


class Sam3TrainingModel(nn.Module):
    saves_frozen_weights = True  # a checkpoint is the whole SAM 3 (ZeRO-3 gathers the frozen parts to write it)

    def __init__(self, backend: Sam3Backend, config: Sam3TrainConfig):
        super().__init__()
        self.backend, self.config = backend, config
        self.sam3 = backend.model  # registered, so .to(), .parameters() and DDP see it
        for name, modules in PARTS.items():
            for module in modules:
                getattr(self.sam3, module).requires_grad_(bool(getattr(config, f"train_{name}")))
        self.tracker = backend.tracker  # registered, so it moves with the model; only the ViT it shares trains
        if backend.tracker is not None:
            shared = {id(p) for p in self.sam3.vision_encoder.backbone.parameters()}
            for p in backend.tracker.parameters():
                if id(p) not in shared:
                    p.requires_grad_(False)

        if config.use_lora:
            add_lora(self.sam3, config, PARTS)

    @classmethod
    def build(cls, config: Sam3TrainConfig) -> Sam3TrainingModel:
        if config.sam == "tiny":
            from vlmsam.sam.sam3_tiny import build_tiny_sam3

            c = config
            backend = build_tiny_sam3(seed=0, tracker=False, words=VOCABULARY, image_size=c.tiny_image_size, patch=c.tiny_patch, hidden=c.tiny_hidden,
                                      vit_layers=c.tiny_vit_layers, text_layers=c.tiny_text_layers, queries=c.tiny_queries,
                                      decoder_layers=c.tiny_decoder_layers)
        else:
            from vlmsam.sam import load_sam_backend

            backend = load_sam_backend(config.sam)
            if not isinstance(backend, Sam3Backend):
                raise CheckpointError(f"model.sam: {config.sam} is not a SAM 3 (phrase training needs Sam3Model)")
        return cls(backend, config)

    @property
    def collator(self) -> PhraseCollator:
        return PhraseCollator(self.backend, self.config)

    def forward(self, batch: PhraseBatch) -> PhraseOutput:
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        device = next(self.sam3.parameters()).device
        vision = self.sam3.vision_encoder(batch.pixels.to(device))
        pick = batch.image_of.to(device)
        shared = Sam3VisionEncoderOutput(  # each phrase sees its image's features: one ViT pass per image
            last_hidden_state=vision.last_hidden_state.index_select(0, pick),
            fpn_hidden_states=tuple(t.index_select(0, pick) for t in vision.fpn_hidden_states),
            fpn_position_encoding=tuple(t.index_select(0, pick) for t in vision.fpn_position_encoding))
        mask = batch.attention_mask.to(device)
        seen: dict = {}
        hooks = [getattr(self.sam3, name).register_forward_hook(lambda m, a, o, name=name: seen.__setitem__(name, o))
                 for name in ("detr_encoder", "detr_decoder")]
        for name in ("detr_decoder", "mask_decoder") if self.config.dac else ():  # DAC re-runs them on these inputs
            hooks.append(getattr(self.sam3, name).register_forward_pre_hook(
                lambda m, a, kw, name=name: seen.__setitem__(f"{name}_inputs", kw), with_kwargs=True))
        try:
            out = self.sam3(vision_embeds=shared, input_ids=batch.input_ids.to(device), attention_mask=mask)
        finally:
            for h in hooks:
                h.remove()
        named = sam3_losses(out, batch.targets, layers=self._earlier_layers(seen, mask))
        if self.config.dac:
            logits, boxes, masks = self.one_to_many_queries(seen["detr_decoder_inputs"], seen["mask_decoder_inputs"])
            o2m = one_to_many_losses(logits, boxes, batch.targets, masks=masks)
            named = {**named, **o2m, "loss": named["loss"] + o2m["loss"]}
        return PhraseOutput(named)

    def one_to_many_queries(self, decoder_inputs: dict, mask_inputs: dict | None = None):
        """Class logits ``(L, B, Q)`` and XYXY boxes ``(L, B, Q, 4)`` of every layer for DAC's query copies, and the
        last layer's masks (with ``mask_inputs`` and ``dac_masks``; else None): the decoder run again on the same
        inputs with each layer's self-attention contributing nothing (Meta's o2m queries skip it; nothing else in a
        layer mixes queries, so a second pass equals their joint one)."""
        decoder = self.sam3.detr_decoder
        silence = [layer.self_attn.register_forward_hook(lambda m, a, o: (torch.zeros_like(o[0]), *o[1:]))
                   for layer in decoder.layers]
        try:
            dec = decoder(**decoder_inputs)
        finally:
            for h in silence:
                h.remove()
        hidden = dec.intermediate_hidden_states
        logits, boxes = self._layer_predictions(hidden, dec.reference_boxes, decoder_inputs["text_features"],
                                                decoder_inputs["text_mask"])
        masks = None
        if mask_inputs is not None and self.config.dac_masks:
            masks = self.sam3.mask_decoder(**{**mask_inputs, "decoder_queries": hidden[-1]}).pred_masks
        return logits, boxes, masks

    def _earlier_layers(self, seen: dict, mask: torch.Tensor):
        """Class logits, boxes and presence logits of every decoder layer before the last, computed as Sam3Model
        computes the last one's."""
        dec, enc = seen["detr_decoder"], seen["detr_encoder"]
        hidden, ref, presence = dec.intermediate_hidden_states[:-1], dec.reference_boxes[:-1], dec.presence_logits[:-1]
        if not len(hidden):
            return None
        return (*self._layer_predictions(hidden, ref, enc.text_features, mask.bool()), presence)

    def _layer_predictions(self, hidden: torch.Tensor, reference_boxes: torch.Tensor, text_features, text_mask):
        """Class logits ``(L, B, Q)`` and XYXY boxes ``(L, B, Q, 4)`` of decoder layers' outputs, as Sam3Model makes
        its last layer's: the box head on the refined reference boxes, dot-product scoring against the text."""
        from transformers.models.sam3.modeling_sam3 import box_cxcywh_to_xyxy, inverse_sigmoid

        boxes = box_cxcywh_to_xyxy((inverse_sigmoid(reference_boxes) + self.sam3.detr_decoder.box_head(hidden)).sigmoid())
        logits = self.sam3.dot_product_scoring(decoder_hidden_states=hidden, text_features=text_features,
                                               text_mask=text_mask).squeeze(-1)
        return logits, boxes

    def segmenter(self):
        from vlmsam.gsam.segmenter import GroundedSegmenter

        return GroundedSegmenter(None, self.backend, score_threshold=self.config.score_threshold, label="sam3 training")

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """A ``grounded`` checkpoint; with LoRA its SAM 3 is written merged (a plain Sam3Model any loader
        takes) and the adapters beside it, for resuming."""
        lora = self.config.use_lora
        out = self.segmenter().save_pretrained(out_dir, sam_state=merged_state(self.sam3) if lora else None)
        if lora:
            save_lora(self.sam3, out)
        return out

    def load_trainable(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        if self.config.use_lora:
            return load_lora(self.sam3, path)
        files = sorted((Path(path) / "sam").glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{path}: no sam/*.safetensors (not a SAM 3 phrase-training checkpoint)")
        state = {}
        for f in files:
            state.update(load_file(str(f)))
        missing, unexpected = self.sam3.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{path}: its SAM 3 does not fit this model ({len(missing)} missing, {len(unexpected)} unexpected "
                                  "weights); train from the same model.sam")

    def optimizer_groups(self) -> list[dict]:
        """The trained weights grouped by their learning-rate scale (ViT, its layer-wise decay, text encoder) and,
        as Meta's configs, biases and LayerNorm weights apart without weight decay (unless decay_bias_and_norm)."""
        undecayed = set() if self.config.decay_bias_and_norm else {
            id(p) for m in self.sam3.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters(recurse=False)}
        groups: dict[tuple, list] = {}
        for name, p in self.sam3.named_parameters():
            if p.requires_grad:
                decays = self.config.decay_bias_and_norm or not ("bias" in name or id(p) in undecayed)
                groups.setdefault((self._lr_scale(name), decays), []).append(p)
        return [{"params": params, "lr_scale": scale, **({} if decays else {"weight_decay": 0.0})}
                for (scale, decays), params in groups.items()]

    def _lr_scale(self, name: str) -> float:
        c = self.config
        if name.startswith(("text_encoder.", "text_projection.")):
            return c.text_lr_scale
        if not name.startswith("vision_encoder."):
            return 1.0
        n = len(self.sam3.vision_encoder.backbone.layers)
        block = re.match(r"vision_encoder\.backbone\.layers\.(\d+)\.", name)
        if block:
            depth = n - int(block.group(1))
        elif name == "vision_encoder.backbone.embeddings.position_embeddings":
            depth = 0  # as Meta's configs: the position embedding keeps the ViT's full rate
        elif name.startswith(("vision_encoder.backbone.embeddings.", "vision_encoder.backbone.layer_norm.")):
            depth = n + 1  # the patch embedding and the norm before the blocks: the lowest rate
        else:
            depth = 0  # the FPN neck
        return c.vision_lr_scale * c.vision_layer_decay ** depth

    def trainable_summary(self) -> str:
        n = sum(p.numel() for p in self.sam3.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.sam3.parameters())
        parts = ", ".join(name for name in PARTS if getattr(self.config, f"train_{name}")) or "none"
        how = f"LoRA r={self.config.lora_r} on {parts}" if self.config.use_lora else parts
        return f"SAM 3: {n:,} of {total:,} weights train ({how})"


def segmenter(model: Sam3TrainingModel):
    return model.segmenter()

