"""The registry is open and typed: a design in another distribution registers through the
``vlmsam.designs`` entry point and is then used by the CLI with no edit of ours; every flag either
applies to the chosen design or is one line that names it (exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmsam.engine import BuildSpec, UsageError, registry

ROOT = Path(__file__).resolve().parent.parent


def _test_distribution(site: Path) -> Path:
    """A distribution of its own (metadata only) whose entry point names the test package's design."""
    info = site / "vlmsam_brightest-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vlmsam-brightest\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[vlmsam.designs]\nbrightest = tests.helpers.minimal_design:DESIGN\n")
    return site


def _vlmsam(args, site: Path | None, cwd: Path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (site, ROOT) if p), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "vlmsam", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_a_design_from_another_distribution_is_used_by_the_cli(tmp_path):
    image = np.zeros((20, 30, 3), np.uint8)
    image[5:12, 8:20] = 250  # the bright part the minimal design finds
    Image.fromarray(image).save(tmp_path / "scene.png")
    without = _vlmsam(["segment", "scene.png", "the bright part", "--segmenter", "brightest", "--out", "out"], None, tmp_path)
    assert without.returncode == 2 and "brightest" in without.stderr  # not installed: not a choice
    site = _test_distribution(tmp_path / "site")
    done = _vlmsam(["segment", "scene.png", "the bright part", "--segmenter", "brightest", "--out", "out"], site, tmp_path)
    assert done.returncode == 0, done.stderr
    mask = np.array(Image.open(tmp_path / "out" / "scene_mask_0.png")) > 0
    assert mask.sum() == 7 * 12 and mask[5:12, 8:20].all()
    assert json.loads((tmp_path / "out" / "scene.json").read_text())["answer"] == "the bright part"
    flag = _vlmsam(["segment", "scene.png", "x", "--segmenter", "brightest", "--sam", "facebook/sam-vit-base", "--out", "o2"],
                   site, tmp_path)
    assert flag.returncode == 2
    assert flag.stderr.strip().splitlines() == ["vlmsam segment: error: --sam does not apply to the brightest design (it takes --model): leave it out"]


@pytest.mark.parametrize("design, flags, named", [
    ("seg_token", ["--detector", "IDEA-Research/grounding-dino-tiny"], "--detector"),
    ("seg_token", ["--vlm-endpoint", "http://127.0.0.1:9/v1", "--vlm", "m"], "--vlm-endpoint"),
    ("box_prompt", ["--detector", "IDEA-Research/grounding-dino-tiny"], "--detector"),
    ("grounded", ["--vlm", "Qwen/Qwen2.5-VL-3B-Instruct"], "--vlm"),
    ("grounded", ["--max-new-tokens", "5"], "--max-new-tokens"),
])
def test_a_flag_the_design_does_not_take_is_one_line(tmp_path, design, flags, named):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    done = _vlmsam(["segment", "a.png", "x", "--segmenter", design, *flags, "--out", "out"], None, tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{named} does not apply to the {design} design" in lines[0]
    assert not (tmp_path / "out").exists()  # refused before anything loads or is written


def test_the_python_api_checks_the_same_way():
    from vlmsam.segmenter import load_segmenter

    with pytest.raises(UsageError, match="--detector does not apply to the box_prompt design"):
        load_segmenter(segmenter="box_prompt", detector="IDEA-Research/grounding-dino-tiny")
    with pytest.raises(UsageError, match="--vlm-endpoint does not apply to the seg_token design"):
        registry.design("seg_token").check(BuildSpec(vlm_endpoint="http://127.0.0.1:9/v1"))
    registry.design("gsam").check(BuildSpec(vlm="m", sam="s", detector="d", device="cpu", dtype="fp32"))  # all apply


def test_register_refuses_what_is_not_a_design():
    with pytest.raises(TypeError, match="Design"):
        registry.register(lambda spec: None)


def test_an_unknown_design_names_the_available_ones():
    from vlmsam.errors import CheckpointError

    with pytest.raises(CheckpointError, match="unknown segmenter 'nope'; available: .*seg_token"):
        registry.design("nope")


def test_reading_the_designs_imports_nothing_heavy():
    """Every design's spec (and so a flag it does not take) is read before torch or transformers load."""
    code = ("import sys\nfrom vlmsam.engine import registry\nfor n in registry.available(): registry.design(n)\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
