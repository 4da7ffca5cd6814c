"""Selector ``llmseg``: LLM-Seg's trained selection, wired to a VLM that answers with ``[SEG]``.

The VLM answers as a ``[SEG]`` model does ("Sure, [SEG]."); the final-layer hidden state at each
``[SEG]`` is the query of :class:`~vlmsam.proposal_select.llmseg_head.SelectionHead`, which scores
the image's SAM proposals (precomputed by ``vlmsam proposals`` for training; generated when an image
is encoded at inference) on frozen DINOv2 features. The chosen proposals' union is the mask.

Trained by ``vlmsam train`` with ``model.model_type: proposal_select`` on the usual dataset mixture
(the same ``[SEG]`` answers as the ``seg_token`` design): language CE + alignment KL + weighted IoU
regression. SAM is not part of the trained model; its proposals are read from ``model.proposals``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vlmsam.data.collate import Batch, Collator
from vlmsam.data.sample import Sample
from vlmsam.engine.registry import CONFIG_NAME
from vlmsam.errors import CheckpointError, VlmsamError
from vlmsam.metrics.iou import mask_iou
from vlmsam.proposal_select.llmseg_head import SelectionHead, select, selection_losses
from vlmsam.vlm.processor import VlmProcessor

WEIGHTS = "llmseg.safetensors"
ADAPTER_DIR = "adapter"


@dataclass
class LlmSegConfig:
    """The ``model`` section of a ``proposal_select`` training config (and the checkpoint's config)."""

    vlm: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    sam: str = "facebook/sam-vit-huge"  # proposes at inference (training reads ``proposals``)
    dinov2: str = "facebook/dinov2-large"
    dino_size: int = 448  # DINOv2 sees the whole image resized to this square (a multiple of its patch)
    proposals: str = ""  # a directory written by `vlmsam proposals` over the training datasets
    max_proposals: int = 50  # the largest K proposals of an image are scored (LLM-Seg: 50)
    amg: dict = field(default_factory=dict)  # inference: the automatic mask generator's settings (AmgConfig fields)
    head_dim: int = 256
    head_depth: int = 2
    head_heads: int = 8
    head_geometry: bool = False  # add each proposal's box and size to its pooled features (not in LLM-Seg)
    select_threshold: float = 0.5  # inference: the union of proposals with predicted IoU above this
    select_single: bool = False  # inference: only the best proposal
    seg_token_id: int = -1
    ce_weight: float = 1.0
    selection_weight: float = 1.0  # alignment KL + 50 x weighted IoU MSE (LLM-Seg's weights inside)
    use_lora: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    train_language_model: bool = False
    train_lm_head: bool = True
    train_embed_tokens: bool = True
    train_head: bool = True

    def trainable(self, component: str) -> bool:
        return self.use_lora if component == "lora" else bool(getattr(self, f"train_{component}"))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"model_type": "vlmsam_proposal_select", "selector": "llmseg", **asdict(self)}, indent=2))

    @classmethod
    def from_dict(cls, data: dict) -> LlmSegConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"model_type", "selector"})
        if unknown:
            raise CheckpointError(f"unknown llmseg config keys: {unknown}")
        return cls(**{k: v for k, v in data.items() if k in known})


class DinoFeatures(nn.Module):
    """Frozen DINOv2 patch features of a whole image: ``(C, s/p, s/p)`` for an ``s x s`` resize (no
    centre crop, so every proposal pixel has a feature under it)."""

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
    def forward(self, image) -> torch.Tensor:
        pixels = self.processor(images=image.convert("RGB"), do_center_crop=False, size={"height": self.size, "width": self.size},
                                return_tensors="pt").pixel_values
        device = next(self.model.parameters()).device
        hidden = self.model(pixel_values=pixels.to(device, next(self.model.parameters()).dtype)).last_hidden_state[0]
        side = self.size // self.model.config.patch_size
        return hidden[1:1 + side * side].T.reshape(-1, side, side)  # drop CLS (and any register tokens)


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


class LlmSegModel(nn.Module):
    def __init__(self, vlm: nn.Module, processor: VlmProcessor, dino: DinoFeatures, config: LlmSegConfig):
        super().__init__()
        self.config, self.processor, self.vlm, self.dino = config, processor, vlm, dino
        hidden = self._base_vlm().config.get_text_config().hidden_size
        self.head = SelectionHead(dino.dim, hidden, config.head_dim, config.head_depth, config.head_heads,
                                  config.head_geometry)
        self._reader = None
        self._keys: dict[str, list[str]] | None = None

    # ---- construction ---------------------------------------------------------------------------

    @classmethod
    def build(cls, config: LlmSegConfig) -> LlmSegModel:
        from vlmsam.vlm.lora import apply_lora
        from vlmsam.vlm.runtime import load_vlm_model

        vlm = load_vlm_model(config.vlm)
        processor = VlmProcessor.from_pretrained(config.vlm)
        config.seg_token_id = processor.add_seg_token()
        if vlm.get_input_embeddings().weight.shape[0] < len(processor.tokenizer):
            vlm.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
        model = cls(vlm, processor, DinoFeatures.load(config.dinov2, config.dino_size), config)
        if config.use_lora:
            model.vlm = apply_lora(vlm, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                                   targets=config.lora_targets)
        model.apply_trainable()
        return model

    def _base_vlm(self) -> nn.Module:
        return self.vlm.get_base_model() if hasattr(self.vlm, "get_base_model") else self.vlm

    def _parts(self) -> dict[str, nn.Module]:
        base = self._base_vlm()
        return {"language_model": base.model.language_model, "lm_head": base.get_output_embeddings(),
                "embed_tokens": base.get_input_embeddings(), "head": self.head}

    def apply_trainable(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        for name, module in self._parts().items():
            if self.config.trainable(name):
                for n, p in module.named_parameters():
                    if "lora_" not in n:
                        p.requires_grad_(True)
        if self.config.use_lora:
            for n, p in self.vlm.named_parameters():
                if ".lora_" in n:
                    p.requires_grad_(True)

    def trainable_summary(self) -> str:
        rows = [(name, sum(p.numel() for p in m.parameters() if p.requires_grad), sum(p.numel() for p in m.parameters()))
                for name, m in {**self._parts(), "dinov2": self.dino.model}.items()]
        lora = sum(p.numel() for n, p in self.vlm.named_parameters() if ".lora_" in n)
        return "\n".join([f"{'component':<18}{'trainable':>14}{'total':>14}", f"{'lora':<18}{lora:>14,}{lora:>14,}"]
                         + [f"{n:<18}{t:>14,}{a:>14,}" for n, t, a in rows])

    @property
    def collator(self) -> Collator:
        if getattr(self, "_collator", None) is None:
            self._collator = Collator(self.processor, None)  # no SAM pixels: the proposals are precomputed
        return self._collator

    # ---- proposals and features -----------------------------------------------------------------

    def proposals_for(self, sample: Sample, size: tuple[int, int]) -> torch.Tensor:
        """The stored top-K proposals of a training image, ``(K, H, W) bool`` at ``size``."""
        from vlmsam.proposals.store import ProposalReader

        if self._reader is None:
            if not self.config.proposals:
                raise VlmsamError("model.proposals is not set: run `vlmsam proposals` over the training datasets and "
                                  "name its --out directory in model.proposals")
            self._reader = ProposalReader(self.config.proposals, k=self.config.max_proposals)
            self._keys = {}
            for key in self._reader.where:
                self._keys.setdefault(Path(key).name, []).append(key)
        image = str(sample.image)
        keys = [k for k in self._keys.get(Path(image).name, []) if image == k or image.endswith("/" + k)]
        if not keys:
            raise VlmsamError(f"{image}: no stored proposals in {self.config.proposals}; run `vlmsam proposals` over the "
                              "same datasets as training")
        stored = self._reader[keys[0]]
        masks = torch.from_numpy(stored.masks)
        if tuple(masks.shape[-2:]) != tuple(size):
            masks = F.interpolate(masks[None].float(), size=size, mode="nearest")[0] > 0.5
        return masks

    def features_for(self, sample: Sample) -> torch.Tensor:
        from vlmsam.io.images import load_image

        return self.dino(load_image(sample.image))

    # ---- training -------------------------------------------------------------------------------

    def forward(self, batch: Batch | list[Sample]) -> LlmSegOutput:
        if not isinstance(batch, Batch):
            batch = self.collator(batch)
        device = next(self.vlm.parameters()).device
        batch = batch.to(device)
        out = self.vlm(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       mm_token_type_ids=self.processor.mm_token_type_ids(batch.input_ids),
                       pixel_values=batch.row_pixel_values(), image_grid_thw=batch.image_grid_thw[batch.row_image],
                       output_hidden_states=True)
        logits, labels = out.logits[:, :-1].float(), batch.labels[:, 1:]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        hidden = out.hidden_states[-1]
        selection, alignment, regression, chosen, n = (hidden.new_zeros((), dtype=torch.float32) for _ in range(5))
        for b in range(len(batch)):
            targets = batch.masks[b]
            if not len(targets):
                continue
            states = torch.cat([hidden[r, batch.input_ids[r] == self.config.seg_token_id]
                                for r in range(batch.offsets[b], batch.offsets[b + 1])])
            sample = batch.samples[b]
            proposals = self.proposals_for(sample, tuple(targets.shape[-2:])).to(device)
            if not len(proposals):
                continue
            features = self.features_for(sample).to(device, self.head.feature_proj.weight.dtype)
            for state, target in zip(states, targets):
                gt = mask_iou(proposals, target == 1)
                iou, emb, query = self.head(features, proposals, state.to(self.head.feature_proj.weight.dtype))
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

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, module in self._parts().items():
            if name == "head" or self.config.trainable(name):
                for key, value in module.state_dict().items():
                    if "lora_" not in key and not (name == "language_model" and key.startswith("embed_tokens.")):
                        out[f"{name}.{key.replace('base_layer.', '')}"] = value.detach().contiguous().cpu()
        base = self._base_vlm()
        if base.get_output_embeddings().weight is base.get_input_embeddings().weight:
            out.pop("embed_tokens.weight", None)
        return out

    def save_pretrained(self, out_dir: str | Path, *, amg: dict | None = None) -> Path:
        """``amg``: the proposal settings to record with the checkpoint (default: the config's)."""
        from dataclasses import replace

        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (self.config if amg is None else replace(self.config, amg=dict(amg))).save(out / CONFIG_NAME)
        save_file(self.trainable_state_dict(), str(out / WEIGHTS))
        if self.config.use_lora:
            self.vlm.save_pretrained(str(out / ADAPTER_DIR))
        self.processor.save_pretrained(out)
        return out

    def load_trainable(self, path: str | Path) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        try:
            if self.config.use_lora:
                from peft import set_peft_model_state_dict

                set_peft_model_state_dict(self.vlm, load_file(str(path / ADAPTER_DIR / "adapter_model.safetensors")))
            state = load_file(str(path / WEIGHTS))
        except (OSError, SafetensorError) as exc:
            raise CheckpointError(f"{path}: unreadable llmseg weights ({type(exc).__name__}: {exc})") from None
        parts = self._parts()
        for name in {k.split(".", 1)[0] for k in state}:
            module = parts[name]
            # saved without peft's "base_layer." (trainable_state_dict), so map back to this module's names
            actual = {k.replace("base_layer.", ""): k for k in module.state_dict()}
            own = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(name + ".")}
            unknown = sorted(set(own) - set(actual))
            if unknown:
                raise CheckpointError(f"{path}: {WEIGHTS} does not fit this model ({name}: {unknown[:3]})")
            module.load_state_dict({actual[k]: v for k, v in own.items()}, strict=False)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> LlmSegModel:
        from vlmsam.engine.registry import read_config
        from vlmsam.vlm.runtime import load_vlm_model

        path = Path(path)
        config = LlmSegConfig.from_dict(read_config(path))
        for name in ("vlm", "sam", "dinov2"):  # a bundle names its parts relative to itself
            if getattr(config, name) and (path / getattr(config, name)).is_dir():
                setattr(config, name, str(path / getattr(config, name)))
        vlm = load_vlm_model(config.vlm)
        processor = VlmProcessor.from_pretrained(path)
        if processor.seg_token_id != config.seg_token_id:
            raise CheckpointError(f"{path}: the tokenizer's [SEG] id {processor.seg_token_id} differs from the config's {config.seg_token_id}")
        if vlm.get_input_embeddings().weight.shape[0] != len(processor.tokenizer):
            vlm.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
        model = cls(vlm, processor, DinoFeatures.load(config.dinov2, config.dino_size), config)
        if config.use_lora:
            from peft import PeftModel

            model.vlm = PeftModel.from_pretrained(vlm, str(path / ADAPTER_DIR))
        model.load_trainable(path)
        model.apply_trainable()
        return model.eval()
