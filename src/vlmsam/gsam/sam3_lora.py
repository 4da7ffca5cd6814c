"""LoRA for SAM 3 phrase training (``model.use_lora``): adapters on the chosen parts' linear layers, every
base weight frozen; a checkpoint holds the merged Sam3Model (what every loader takes) and the adapters
(what a resume needs), so nothing downstream has to know about peft."""

from __future__ import annotations

from pathlib import Path

import torch

from vlmsam.errors import CheckpointError

LORA_FILE = "sam_lora.safetensors"


def add_lora(sam3: torch.nn.Module, config, parts: dict[str, tuple[str, ...]]) -> None:
    """Adapters on the layers named in ``config.lora_targets`` inside the parts whose ``train_<part>`` is set."""
    from peft import LoraConfig, inject_adapter_in_model

    chosen = [m for name, modules in parts.items() if getattr(config, f"train_{name}") for m in modules]
    if not chosen or not config.lora_targets:
        raise CheckpointError("model.use_lora: choose the parts that get adapters (train_vision, train_text, train_detector, "
                              "train_mask_decoder) and the layers (model.lora_targets)")
    pattern = rf"^({'|'.join(chosen)})\..*\.({'|'.join(config.lora_targets)})$"
    sam3.requires_grad_(False)
    try:
        inject_adapter_in_model(LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                           target_modules=pattern), sam3)
    except ValueError:
        raise CheckpointError(f"model.lora_targets {config.lora_targets}: no such linear layer in {', '.join(chosen)}") from None
    for name, p in sam3.named_parameters():
        p.requires_grad_("lora_" in name)


def adapters(sam3: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights (what a LoRA checkpoint holds besides the merged model)."""
    return {k: v for k, v in sam3.state_dict().items() if "lora_" in k}


def save_lora(sam3: torch.nn.Module, out: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in adapters(sam3).items()}, str(Path(out) / LORA_FILE))


@torch.no_grad()
def merged_state(sam3: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The Sam3Model's own state dict with each adapter folded into its layer's weight (the model is untouched,
    so training goes on bit for bit)."""
    from peft.tuners.lora import LoraLayer

    state = {k: v for k, v in sam3.state_dict().items() if "lora_" not in k}
    for name, module in sam3.named_modules():
        if isinstance(module, LoraLayer):
            base = state.pop(f"{name}.base_layer.weight")
            state[f"{name}.weight"] = (base.float() + module.get_delta_weight("default").float()).to(base.dtype)  # one rounding
            if f"{name}.base_layer.bias" in state:
                state[f"{name}.bias"] = state.pop(f"{name}.base_layer.bias")
    return state


def load_lora(sam3: torch.nn.Module, path: str | Path) -> None:
    """A LoRA checkpoint's adapters into this model (whose base weights came from ``model.sam``)."""
    from safetensors.torch import load_file

    file = Path(path) / LORA_FILE
    if not file.is_file():
        raise CheckpointError(f"{path}: no {LORA_FILE}, so not a LoRA checkpoint of SAM 3; to put adapters on a trained "
                              f"SAM 3, set model.sam to {Path(path) / 'sam'}")
    state = load_file(str(file))
    wanted = {k: v.shape for k, v in adapters(sam3).items()}
    got = {k: v.shape for k, v in state.items()}
    if got != wanted:
        wrong = sum(got[k] != shape for k, shape in wanted.items() if k in got)
        raise CheckpointError(f"{file}: its adapters do not fit this model ({len(wanted.keys() - got.keys())} missing, "
                              f"{len(got.keys() - wanted.keys())} unexpected, {wrong} of another size); use the same "
                              "model.sam, parts and lora settings")
    sam3.load_state_dict(state, strict=False)
