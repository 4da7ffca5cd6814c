"""The ``llmseg`` selector end to end on tiny real models: ``vlmsam proposals`` writes the training images'
proposals, ``vlmsam train`` (model.model_type: proposal_select) trains the [SEG] VLM and the selection
head from them, resumes exactly, and ``vlmsam evaluate`` scores the checkpoint through the segmenter
contract; the selection loss falls on a fixed batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli
from tests.helpers.tiny_segmenters import save_tiny_dinov2
from tests.helpers.train_setup import write_setup


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = write_setup(tmp_path_factory.mktemp("llmseg"))
    save_tiny_dinov2(root / "dino")
    proc = run_cli("proposals", "--dataset-dir", root / "data", "--datasets", "reason_seg:train", "--out", root / "proposals",
                   "--sam", root / "sam", "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
                   "--box-nms-thresh", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root


def overrides(root, run_dir, **extra):
    base = {
        "model.model_type": "proposal_select", "model.vlm": root / "vlm", "model.sam": root / "sam", "model.dinov2": root / "dino",
        "model.dino_size": 64, "model.proposals": root / "proposals", "model.max_proposals": 8, "model.head_dim": 32,
        "model.head_heads": 2, "model.lora_r": 4, "model.lora_alpha": 8,
        "data.dataset_dir": root / "data", "data.datasets": "reason_seg", "data.sample_rates": "1", "data.num_workers": 0,
        "train.run_dir": run_dir, "train.steps_per_epoch": 4, "train.epochs": 1, "train.batch_size": 2, "train.warmup_steps": 1,
        "train.save_every": 2, "train.log_every": 1, "train.progress": False, "eval.val_dataset": "",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_train_resume_and_evaluate(setup, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    proc = run_cli("train", *overrides(setup, full))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(x) for x in (full / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert all({"ce_loss", "alignment_loss", "iou_loss", "selected_iou"} <= set(r) for r in log)
    assert all(r["alignment_loss"] > 0 for r in log)  # the head was trained on real proposals
    # stop after step 2, resume: the same losses as the uninterrupted run
    assert run_cli("train", *overrides(setup, cut, **{"train.stop_at_step": 2})).returncode == 0
    proc = run_cli("train", *overrides(setup, cut), "--resume", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = [json.loads(x) for x in (cut / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(log, resumed):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), (a, b)

    checkpoint = full / "checkpoints" / "step_000004"
    config = json.loads((checkpoint / "vlmsam_config.json").read_text())
    assert config["model_type"] == "vlmsam_proposal_select" and config["selector"] == "llmseg"
    out = tmp_path / "eval"
    proc = run_cli("evaluate", "--model", checkpoint, "--dataset", "reason_seg:val", "--dataset-dir", setup / "data",
                   "--out", out, "--max-new-tokens", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] >= 1 and metrics["giou"] == pytest.approx(_giou(out / "predictions.jsonl", setup / "data"), abs=1e-4)


def _giou(predictions, dataset_dir) -> float:
    """gIoU recomputed from the written predictions and the loader's targets with numpy and pycocotools
    alone: per request, IoU of the union of its masks over the non-ignored pixels (1 when both are empty)."""
    import numpy as np
    from pycocotools import mask as mask_utils

    from vlmsam.data.reason_seg import ReasonSegDataset

    dataset = ReasonSegDataset(dataset_dir, "val")
    targets = {}
    for i in range(len(dataset)):
        sample = dataset.load_eval(i)
        for query, target in zip(sample.meta["queries"], sample.masks):
            targets[(Path(str(sample.image)).stem, query)] = target
    ious = []
    for line in map(json.loads, predictions.read_text().splitlines()):
        target = targets[(line["image"], line["query"])]
        pred = np.zeros(target.shape, bool)
        for rle in line["masks"]:
            pred |= mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
        valid, truth = target != 255, target == 1
        union = ((pred | truth) & valid).sum()
        ious.append(1.0 if union == 0 else ((pred & truth) & valid).sum() / union)
    return float(np.mean(ious))


def test_missing_proposals_are_one_line(setup, tmp_path):
    proc = run_cli("train", *overrides(setup, tmp_path / "run", **{"model.proposals": tmp_path / "nowhere"}))
    assert proc.returncode == 2 and "vlmsam proposals" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_the_selection_loss_falls_on_a_fixed_batch(setup):
    from vlmsam.data.reason_seg import ReasonSegDataset
    from vlmsam.proposal_select.llmseg import LlmSegConfig, LlmSegModel
    import random

    torch.manual_seed(0)
    config = LlmSegConfig(vlm=str(setup / "vlm"), sam=str(setup / "sam"), dinov2=str(setup / "dino"), dino_size=64,
                          proposals=str(setup / "proposals"), max_proposals=8, head_dim=32, head_heads=2, lora_r=4, lora_alpha=8,
                          ce_weight=0.0)
    model = LlmSegModel.build(config).train()
    ds = ReasonSegDataset(setup / "data", "train", explanatory=0.0)
    samples = [ds.load(i, random.Random(i)) for i in range(len(ds))]
    samples = [s for s in samples if len(s.masks)]
    batch = model.collator(samples)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = model(batch)
    for _ in range(30):
        optimizer.zero_grad()
        model(batch).loss.backward()
        optimizer.step()
    last = model(batch)
    first_loss, last_loss = float(first.loss.detach()), float(last.loss.detach())
    assert last_loss < 0.5 * first_loss, (first_loss, last_loss)
