"""Devices and dtypes as users name them (``--device auto|cpu|cuda[:N]``, ``--dtype bf16|fp16|fp32``).

Checked before any model moves: a CUDA device on a torch without CUDA is one clear error, not an
``AssertionError`` from inside torch.
"""

from __future__ import annotations

import re

import torch

from vlmsam.errors import VlmsamError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """``None`` stays None (the model's own device); ``auto`` is CUDA where available, else CPU."""
    if device is None or isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not match:
        raise VlmsamError(f"--device {device!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise VlmsamError(f"--device {device}: this torch has no CUDA device (use --device cpu or auto)")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise VlmsamError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return torch.device(name)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise VlmsamError(f"--dtype {dtype!r}: use bf16, fp16 or fp32") from None
