"""Saving and loading a fine-tuned VLM model's trained weights: the declared trainable parts
(safetensors, named ``<part>.<key>``), LoRA as a peft adapter, the tokenizer; the base-model loaders and
the paths a checkpoint records."""

from __future__ import annotations

from pathlib import Path

import torch

from vlmsam.errors import CheckpointError, first_line

ADAPTER_DIR = "adapter"
TRAINABLE_WEIGHTS = "trainable.safetensors"


class PersistenceMixin:
    WEIGHTS = TRAINABLE_WEIGHTS  # the file of the declared trainable parts
    ALWAYS_SAVED: tuple[str, ...] = ()  # parts saved whether or not they train (no base model has them)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Declared trainable weights other than LoRA (LoRA goes to the peft adapter), and the
        ``ALWAYS_SAVED`` parts; a tied ``embed_tokens`` is left to ``lm_head``."""
        out = {}
        for name, module in self._parts().items():
            if name in self.ALWAYS_SAVED or self.config.trainable(name):
                for key, value in module.state_dict().items():
                    if self._own(name, key):
                        out[f"{name}.{key.replace('base_layer.', '')}"] = value.detach().contiguous().cpu()
        if "lm_head.weight" in out and self._tied():
            out.pop("embed_tokens.weight", None)  # the same tensor (safetensors refuses shared tensors)
        return out

    def _tied(self) -> bool:
        base = self._base_vlm()
        return base.get_output_embeddings().weight is base.get_input_embeddings().weight

    def save_weights(self, out: Path, state: dict[str, torch.Tensor] | None = None) -> None:
        """The trained weights (``state``, default :meth:`trainable_state_dict`), the LoRA adapter and the
        tokenizer (which knows ``[SEG]``) into ``out``."""
        from safetensors.torch import save_file

        save_file(self.trainable_state_dict() if state is None else state, str(out / self.WEIGHTS))
        if self.config.use_lora:
            self.vlm.save_pretrained(str(out / ADAPTER_DIR))
        self.processor.save_pretrained(out)

    def read_trainable(self, path: Path) -> dict[str, torch.Tensor]:
        """The ``<part>.<key>`` weights a checkpoint holds (the file ``WEIGHTS``)."""
        from safetensors.torch import load_file

        try:
            return load_file(str(path / self.WEIGHTS))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no {self.WEIGHTS} in this checkpoint") from None
        except Exception as exc:  # safetensors raises its own error types for truncated files
            raise CheckpointError(f"{path / self.WEIGHTS}: unreadable ({first_line(exc)}); the file is "
                                  "truncated or corrupt: copy it again or use another checkpoint") from None

    def load_part_weights(self, state: dict[str, torch.Tensor], path: Path) -> None:
        """Load ``<part>.<key>`` weights into the parts; a key that fits no part, or an ``ALWAYS_SAVED``
        part that is incomplete, is a :class:`CheckpointError`."""
        parts = self._parts()
        strangers = sorted({k.split(".", 1)[0] for k in state} - set(parts))
        if strangers:
            raise CheckpointError(f"{path}: {self.WEIGHTS} does not fit this model (no part named {strangers[0]})")
        for name, module in parts.items():
            own = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            if not own:
                continue
            # saved without peft's "base_layer." (trainable_state_dict): map back to this module's names
            actual = {k.replace("base_layer.", ""): k for k in module.state_dict() if self._own(name, k)}
            unexpected = sorted(set(own) - set(actual))
            missing = sorted(set(actual) - set(own)) if name in self.ALWAYS_SAVED else []
            if unexpected or missing:
                raise CheckpointError(f"{path}: {name} weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
            module.load_state_dict({actual[k]: v for k, v in own.items()}, strict=False)

    def load_adapter_weights(self, path: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        adapter = path / ADAPTER_DIR / "adapter_model.safetensors"
        if not adapter.is_file():
            raise CheckpointError(f"{path}: no LoRA adapter ({adapter.name}) in this checkpoint")
        result = set_peft_model_state_dict(self.vlm, load_file(str(adapter)))
        if getattr(result, "unexpected_keys", None):
            raise CheckpointError(f"{path}: LoRA adapter does not fit this model: {result.unexpected_keys[:3]}")

    def load_trainable(self, path: str | Path) -> None:
        """Load a checkpoint's trained weights (LoRA adapter + declared parts) into this model, which
        must have been built from the same config (how training resumes)."""
        path = Path(path)
        if self.config.use_lora:
            self.load_adapter_weights(path)
        self.load_part_weights(self.read_trainable(path), path)

    def finish_loading(self, path: Path, device=None):
        """A model built from a checkpoint's config and base models: its adapter and trained weights loaded,
        the declared parts trainable, in eval mode (on ``device`` when given)."""
        if self.config.use_lora and (path / ADAPTER_DIR).is_dir():
            from peft import PeftModel

            self.vlm = PeftModel.from_pretrained(self.vlm, str(path / ADAPTER_DIR))
        self.load_part_weights(self.read_trainable(path), path)
        self.apply_trainable()
        if device is not None:
            self.to(device)
        return self.eval()

    def merge_lora(self):
        """Fold LoRA into the base weights (in place); the model no longer needs peft."""
        if self.config.use_lora and hasattr(self.vlm, "merge_and_unload"):
            self.vlm = self.vlm.merge_and_unload()
        self.config.use_lora = False
        return self


def portable(name: str, checkpoint: Path) -> str:
    """A base model's name as a checkpoint records it: relative to the checkpoint when inside it, absolute
    otherwise, so it survives moving the checkpoint or running from another directory (hub ids as they are)."""
    path = Path(name).expanduser()
    if not path.exists():
        return name  # a hub id, or a path relative to a checkpoint that is being loaded from elsewhere
    path, root = path.resolve(), checkpoint.resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def resolve(name: str, base_dir: Path | None) -> str:
    """A recorded base model's name, relative to ``base_dir`` (the checkpoint) where it is there."""
    if base_dir is not None and not Path(name).is_absolute() and (base_dir / name).exists():
        return str(base_dir / name)
    return name


def load_sam(name: str, base_dir: Path | None = None):
    from vlmsam.sam.checkpoints import load_sam_model

    return load_sam_model(resolve(name, base_dir))
