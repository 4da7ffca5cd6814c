"""A tiny builder for every registered segmenter design, so the contract suite covers each of them.

Each builder takes a folder to save base models in and returns a ready segmenter of the real
classes (random weights, moved off their initial values so answers and masks are not trivial).
"""

from __future__ import annotations

from pathlib import Path

import torch


def _perturb(module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def seg_token(root: Path):
    from vlmsam.sam.tiny import build_tiny_sam
    from vlmsam.seg_token import SegTokenConfig, SegTokenModel
    from vlmsam.seg_token.segmenter import SegTokenSegmenter
    from vlmsam.vlm.tiny import save_tiny_vlm

    build_tiny_sam().save_pretrained(root / "sam")
    vlm = save_tiny_vlm(root / "vlm", "qwen2_5_vl")
    torch.manual_seed(0)
    model = SegTokenModel.build(SegTokenConfig(vlm=str(vlm), sam=str(root / "sam"), lora_r=4, lora_alpha=8))
    _perturb(model)
    return SegTokenSegmenter(model, max_new_tokens=8)


def box_prompt(root: Path):
    from vlmsam.box_prompt.segmenter import BoxPromptSegmenter
    from vlmsam.sam.backend import SamBackend
    from vlmsam.sam.tiny import build_tiny_sam
    from vlmsam.vlm.runtime import VlmRuntime
    from vlmsam.vlm.tiny import save_tiny_vlm

    torch.manual_seed(0)
    build_tiny_sam().save_pretrained(root / "sam")
    vlm = save_tiny_vlm(root / "vlm", "qwen2_5_vl")
    return BoxPromptSegmenter(VlmRuntime.load(vlm), SamBackend.from_pretrained(root / "sam"), max_new_tokens=8)


BUILDERS = {"seg_token": seg_token, "box_prompt": box_prompt}
