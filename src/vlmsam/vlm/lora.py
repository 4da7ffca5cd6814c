"""LoRA on a Qwen-VL's language layers (peft), for every design that fine-tunes the VLM."""

from __future__ import annotations

from torch import nn


def apply_lora(vlm: nn.Module, *, r: int, alpha: int, dropout: float, targets: list[str]) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        # Language layers only: the vision tower uses some of the same module names.
        target_modules=rf".*language_model.*\.({'|'.join(targets)})$",
        bias="none",
    )
    return get_peft_model(vlm, lora)
