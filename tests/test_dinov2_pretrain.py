"""The tiny DINOv2 of the proposal_select default: built, pre-trained densely on synthetic scenes, saved as
a transformers Dinov2Model that llmseg's frozen feature extractor loads."""

from __future__ import annotations

import json

import torch
from transformers import Dinov2Model

from tools.pretrain_dinov2 import DinoPretrainConfig, pretrain_dinov2
from vlmsam.data.synth import write_synth
from vlmsam.io.images import load_image
from vlmsam.proposal_select.llmseg import DinoFeatures


def test_pretrain_dinov2_trains_and_saves_what_llmseg_loads(tmp_path):
    write_synth(tmp_path / "synth", 40, seed=3, progress=False)
    config = DinoPretrainConfig(steps=8, batch_size=4, warmup_steps=2, size=32, patch=8, hidden=16, layers=1, heads=2)
    log = pretrain_dinov2(tmp_path / "synth", tmp_path / "dino", config, progress=False)
    record = json.loads((tmp_path / "dino" / "pretrain.json").read_text())
    assert record["steps"] == 8 and 0.0 <= record["val_colour_acc"] <= 1.0 and 0.0 <= record["val_kind_acc"] <= 1.0
    assert log["ce_colour"] == record["ce_colour"] and (tmp_path / "dino" / "pretrain_head.safetensors").is_file()
    assert record["history"][0]["ce_colour"] > 0
    # trained: the saved weights differ from the untrained build with the same seed
    from tools.pretrain_dinov2 import build_tiny_dinov2

    build_tiny_dinov2(tmp_path / "untrained", config)
    before = Dinov2Model.from_pretrained(tmp_path / "untrained").state_dict()
    after = Dinov2Model.from_pretrained(tmp_path / "dino").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    image = next((tmp_path / "synth").rglob("*.jpg"))
    features = DinoFeatures.load(str(tmp_path / "dino"), 32)(load_image(image))
    assert features.shape == (16, 4, 4)
