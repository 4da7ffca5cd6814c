"""A tiny training setup on disk: base models, a fixture dataset tree, and the overrides that
point `vlmsam train` at them."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.dataset_trees import write_all
from vlmsam.sam.tiny import build_tiny_sam
from vlmsam.vlm.tiny import save_tiny_vlm


def write_setup(root: Path) -> Path:
    write_all(root / "data")
    build_tiny_sam().save_pretrained(root / "sam")
    save_tiny_vlm(root / "vlm", "qwen2_5_vl")
    return root


def overrides(root: Path, run_dir: Path, **extra) -> list[str]:
    base = {
        "model.vlm": root / "vlm", "model.sam": root / "sam", "model.lora_r": 4, "model.lora_alpha": 8,
        "data.dataset_dir": root / "data", "data.datasets": "reason_seg,refer_seg,sem_seg,vqa",
        "data.sample_rates": "1,1,1,1", "data.refer_seg_data": "refcoco", "data.num_workers": 0,
        "train.run_dir": run_dir, "train.steps_per_epoch": 4, "train.epochs": 2, "train.batch_size": 2,
        "train.warmup_steps": 2, "train.save_every": 2, "train.log_every": 1, "train.progress": False,
        "eval.val_dataset": "reason_seg:val", "eval.val_every": 4, "eval.max_new_tokens": 8,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]
