"""The bundled agent-tiny (the agent design's offline default): small, complete, runs the loop locally on
fresh scenes (a seed no bundle was trained or tested on) with its trace, above regression floors."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli
from tools.default_model import DEFAULT_MODEL_DIR
from vlmsam.data.synth import write_synth

AGENT_DIR = DEFAULT_MODEL_DIR.parent / "agent-tiny"
# Floors against regressions, not the bar (gIoU 0.82, 90 % empty no-target answers), which the bundle does
# not meet (docs/agent.md). Measured on these 40 scenes with run B: gIoU 0.437, no-target answered with no mask 0.80,
# 2.18 turns (run A: 0.459 / 0.80 / 2.0); on the 500 fresh test scenes B scores 0.511 / 0.643 / 2.07 (A 0.478 / 0.614 / 2.03).
GIOU_FLOOR = 0.38
NO_TARGET_FLOOR = 0.5
MAX_MEAN_TURNS = 3.0


def test_bundled_agent_is_small_and_complete():
    files = [p for p in AGENT_DIR.rglob("*") if p.is_file()]
    assert 0 < sum(p.stat().st_size for p in files if p.suffix == ".safetensors") <= 10 * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    for name in ("vlmsam_config.json", "train_config.json", "eval/metrics.json", "vlm/config.json", "vlm/model.safetensors",
                 "vlm/tokenizer.json", "vlm/preprocessor_config.json"):
        assert (AGENT_DIR / name).is_file(), name
    config = json.loads((AGENT_DIR / "vlmsam_config.json").read_text())
    assert config["model_type"] == "vlmsam_agent" and (AGENT_DIR / config["sam"] / "model.safetensors").is_file()


def test_bundled_agent_runs_the_loop_on_fresh_scenes(tmp_path):
    write_synth(tmp_path, 40, seed=616161, splits={"test": 1.0}, progress=False)
    proc = run_cli("evaluate", "--segmenter", "agent", "--dataset", "reason_seg:test", "--dataset-dir", tmp_path,
                   "--out", tmp_path / "eval")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    print(metrics)
    assert metrics["n"] == 40 and 1.0 <= metrics["mean_turns"] <= MAX_MEAN_TURNS, metrics
    assert metrics["giou"] >= GIOU_FLOOR, metrics
    assert metrics["no_target_no_mask_rate"] >= NO_TARGET_FLOOR, metrics


def test_segment_writes_the_agents_trace(tmp_path):
    scene = Path(__file__).parent.parent / "examples" / "scene.jpg"
    proc = run_cli("segment", scene, "Find the one shape that is below the orange hexagon.", "--segmenter", "agent",
                   "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trace = json.loads((tmp_path / "scene_trace.json").read_text())
    assert trace["steps"] and trace["steps"][0]["tool"] in ("segment_phrase", "report_no_mask"), trace
    assert "turn 1: " in proc.stdout and all((tmp_path / name).is_file() for name in trace["pictures"].values())
