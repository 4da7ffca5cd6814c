"""Shared by the [SEG]-token test files: tiny random Qwen-VL + SAM bases, a model over them, forced answers,
a test image and a box target."""

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList

from tests.helpers.forcing import ForceTokens
from vlmsam.sam.tiny import build_tiny_sam
from vlmsam.seg_token import SegTokenConfig, SegTokenModel
from vlmsam.vlm.tiny import save_tiny_vlm


def force(model, answer, end=True):
    ids = model.processor.answer_ids(answer) + ([model.processor.im_end] if end else [])
    return LogitsProcessorList([ForceTokens(ids)])


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    build_tiny_sam().save_pretrained(root / "sam")
    return {fam: save_tiny_vlm(root / fam, fam) for fam in ("qwen2_5_vl", "qwen2_vl", "qwen3_vl")} | {"sam": root / "sam"}


def make_model(bases, family="qwen2_5_vl", **overrides):
    config = SegTokenConfig(vlm=str(bases[family]), sam=str(bases["sam"]), **{"lora_r": 4, "lora_alpha": 8, **overrides})
    torch.manual_seed(0)
    return SegTokenModel.build(config)


def perturb(model, seed=1):
    """Move every trainable weight off its initial value (LoRA B starts at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    img = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    img[10:30, 20:50] = (255, 0, 0)
    return img


def target(shape=(60, 80), box=(10, 30, 20, 50)):
    m = np.zeros(shape, np.uint8)
    m[box[0]:box[1], box[2]:box[3]] = 1
    return m
