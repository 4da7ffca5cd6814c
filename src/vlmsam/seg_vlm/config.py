"""What the model sections of the designs that fine-tune a VLM share (light: no torch import)."""

from __future__ import annotations


class DeclaredParts:
    """``trainable(component)`` for a config dataclass with ``use_lora`` and ``train_<component>`` flags:
    LoRA is governed by ``use_lora``, every other part by its own flag (seg_vlm/parts.py reads it)."""

    def trainable(self, component: str) -> bool:
        return self.use_lora if component == "lora" else bool(getattr(self, f"train_{component}"))
