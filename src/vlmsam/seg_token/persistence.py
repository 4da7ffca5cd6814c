"""Saving and loading [SEG] checkpoints: the config, the declared trainable weights (safetensors), LoRA as a
peft adapter, the tokenizer; merging LoRA into a standalone model; and the base-model loaders."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vlmsam.errors import first_line, CheckpointError
from vlmsam.sam.backend import SamBackend
from vlmsam.seg_token.config import SegTokenConfig
from vlmsam.vlm.processor import VlmProcessor

CONFIG_NAME = "vlmsam_config.json"
ADAPTER_DIR = "adapter"
TRAINABLE_WEIGHTS = "trainable.safetensors"


class PersistenceMixin:

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Declared trainable weights other than LoRA (LoRA goes to the peft adapter); the
        projection is always included, as it exists in no base model."""
        out = {}
        for name, module in self._parts().items():
            if name == "projection" or self.config.trainable(name):
                for key, value in module.state_dict().items():
                    if self._own(name, key):
                        out[f"{name}.{key.replace('base_layer.', '')}"] = value.detach().contiguous().cpu()
        return out

    def save_pretrained(self, out_dir: str | Path, *, projection_only: bool = False) -> Path:
        """Config, trained weights (``trainable.safetensors``, LoRA as a peft adapter) and tokenizer.
        ``projection_only``: the other weights are saved in full beside it (``save_merged``)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        from dataclasses import replace

        # Base models by a path that survives moving the checkpoint or running from another directory:
        # relative to the checkpoint when inside it, absolute otherwise (hub ids as they are).
        replace(self.config, vlm=_portable(self.config.vlm, out), sam=_portable(self.config.sam, out)).save(out / CONFIG_NAME)
        state = self.trainable_state_dict()
        if projection_only:
            state = {k: v for k, v in state.items() if k.startswith("projection.")}
        if self.config.train_lm_head and self.config.train_embed_tokens and self._tied():
            state.pop("embed_tokens.weight", None)  # the same tensor as lm_head
        save_file(state, str(out / TRAINABLE_WEIGHTS))
        if self.config.use_lora:
            self.vlm.save_pretrained(str(out / ADAPTER_DIR))
        self.processor.save_pretrained(out)
        return out

    def _tied(self) -> bool:
        base = self._base_vlm()
        return base.get_output_embeddings().weight is base.get_input_embeddings().weight

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device=None):
        path = Path(path)
        if not (path / CONFIG_NAME).is_file():
            raise CheckpointError(f"{path}: not a vlmsam [SEG] checkpoint (no {CONFIG_NAME})")
        config = SegTokenConfig.load(path / CONFIG_NAME)
        vlm = _load_vlm(config.vlm, path)
        processor = VlmProcessor.from_pretrained(path)
        if processor.seg_token_id != config.seg_token_id:
            raise CheckpointError(f"{path}: the tokenizer's [SEG] id {processor.seg_token_id} differs from the config's {config.seg_token_id}")
        if vlm.get_input_embeddings().weight.shape[0] != len(processor.tokenizer):
            vlm.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
        model = cls(vlm, processor, SamBackend(_load_sam(config.sam, path)), config)
        if config.use_lora and (path / ADAPTER_DIR).is_dir():
            from peft import PeftModel

            model.vlm = PeftModel.from_pretrained(vlm, str(path / ADAPTER_DIR))
        model._load_trainable_weights(path)
        model.apply_trainable()
        if device is not None:
            model.to(device)
        return model.eval()

    def _load_trainable_weights(self, path: Path) -> None:
        from safetensors.torch import load_file

        try:
            state = load_file(str(path / TRAINABLE_WEIGHTS))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no {TRAINABLE_WEIGHTS} in this checkpoint") from None
        except Exception as exc:  # safetensors raises its own error types for truncated files
            raise CheckpointError(f"{path / TRAINABLE_WEIGHTS}: unreadable ({first_line(exc)}); the file is "
                                  "truncated or corrupt: copy it again or use another checkpoint") from None
        for name, module in self._parts().items():
            sub = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            if not sub:
                continue
            if hasattr(module, "base_layer"):  # peft wraps lm_head/embeddings it targets
                module = module.base_layer
            missing, unexpected = module.load_state_dict(sub, strict=False)
            if unexpected or (missing and name == "projection"):
                raise CheckpointError(f"{path}: {name} weights do not fit: missing {missing}, unexpected {unexpected}")

    def load_trainable(self, path: str | Path) -> None:
        """Load a checkpoint's trained weights (LoRA adapter + declared parts) into this model, which
        must have been built from the same config (how training resumes)."""
        from safetensors.torch import load_file

        path = Path(path)
        if self.config.use_lora:
            from peft import set_peft_model_state_dict

            adapter = path / ADAPTER_DIR / "adapter_model.safetensors"
            if not adapter.is_file():
                raise CheckpointError(f"{path}: no LoRA adapter ({adapter.name}) in this checkpoint")
            result = set_peft_model_state_dict(self.vlm, load_file(str(adapter)))
            if getattr(result, "unexpected_keys", None):
                raise CheckpointError(f"{path}: LoRA adapter does not fit this model: {result.unexpected_keys[:3]}")
        self._load_trainable_weights(path)

    def merge_lora(self):
        """Fold LoRA into the base weights (in place); the model no longer needs peft."""
        if self.config.use_lora and hasattr(self.vlm, "merge_and_unload"):
            self.vlm = self.vlm.merge_and_unload()
        self.config.use_lora = False
        return self

    def save_merged(self, out_dir: str | Path) -> Path:
        """A standalone checkpoint: merged VLM and SAM saved in full beside the config."""
        out = Path(out_dir)
        self.merge_lora()
        self._base_vlm().save_pretrained(out / "vlm")
        self.processor.save_pretrained(out / "vlm")  # an ordinary transformers directory: tokenizer and image processor too
        self.sam.save_pretrained(out / "sam")
        self.config.vlm, self.config.sam = str(out / "vlm"), str(out / "sam")  # saved relative to the checkpoint
        return self.save_pretrained(out, projection_only=True)


def _portable(name: str, checkpoint: Path) -> str:
    path = Path(name).expanduser()
    if not path.exists():
        return name  # a hub id, or a path relative to a checkpoint that is being loaded from elsewhere
    path, root = path.resolve(), checkpoint.resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _resolve(name: str, base_dir: Path | None) -> str:
    if base_dir is not None and not Path(name).is_absolute() and (base_dir / name).exists():
        return str(base_dir / name)
    return name


def _load_vlm(name: str, base_dir: Path | None):
    from vlmsam.vlm.runtime import load_vlm_model

    return load_vlm_model(_resolve(name, base_dir))


def _load_sam(name: str, base_dir: Path | None):
    from vlmsam.sam.checkpoints import load_sam_model

    return load_sam_model(_resolve(name, base_dir))


def _apply_lora(vlm: nn.Module, config: SegTokenConfig) -> nn.Module:
    from vlmsam.vlm.lora import apply_lora

    return apply_lora(vlm, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout, targets=config.lora_targets)
