"""The bundled tiny SAM 3 (weights/sam3-tiny, grounded's offline default): small, complete, and its phrase
figures on 60 fresh scenes (a seed no bundle was trained or tested on)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli
from tools.default_model import DEFAULT_MODEL_DIR
from vlmsam.data.synth import write_synth

SAM3_DIR = DEFAULT_MODEL_DIR.parent / "sam3-tiny"
# Floors against regressions, not the bar (recall 0.85, IoU 0.80, 90 %), which the bundle does not meet
# (docs/sam.md). Measured on these 60 scenes: recall 0.439, matched IoU 0.821, no-target empty 0.772 (0.431 /
# 0.831 / 0.781 on the 500 fresh test scenes).
RECALL_FLOOR = 0.35
MATCHED_IOU_FLOOR = 0.75
NO_TARGET_FLOOR = 0.65


def test_bundled_sam3_is_small_and_complete():
    files = [p for p in SAM3_DIR.rglob("*") if p.is_file()]
    assert 0 < sum(p.stat().st_size for p in files if p.suffix == ".safetensors") <= 10 * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    for name in ("vlmsam_config.json", "train_config.yaml", "provenance.json", "eval/metrics.json", "sam/config.json",
                 "sam/model.safetensors", "sam/tokenizer.json"):
        assert (SAM3_DIR / name).is_file(), name
    config = json.loads((SAM3_DIR / "vlmsam_config.json").read_text())
    assert config["model_type"] == "vlmsam_grounded" and config["detector"] is None and config["sam"] == "sam"


def test_bundled_sam3_finds_phrases_on_fresh_scenes(tmp_path):
    write_synth(tmp_path, 60, seed=535353, splits={"test": 1.0}, progress=False)
    proc = run_cli("evaluate", "--segmenter", "grounded", "--dataset", "phrases:test", "--dataset-dir", tmp_path, "--out", tmp_path / "eval")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    print(metrics)
    assert metrics["images"] == 60 and metrics["phrases"] >= 300, metrics
    assert metrics["instance_recall"] >= RECALL_FLOOR and metrics["matched_iou"] >= MATCHED_IOU_FLOOR, metrics
    assert metrics["no_target_empty"] >= NO_TARGET_FLOOR, metrics


def test_segment_all_the_triangles_with_the_grounded_default(tmp_path):
    scene = Path(__file__).parent.parent / "examples" / "scene.jpg"
    proc = run_cli("segment", scene, "all the triangles", "--segmenter", "grounded", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "scene_overlay.jpg").is_file() and (tmp_path / "scene.json").is_file()
