"""The GRPO stage's install rule (tools/rl_bundle.py), on copies of the bundled vlmsam-tiny-grounding: a run is
installed only when its gIoU summed over the wording splits beats the bundle's and its mask for `make demo`'s request
covers the right shape; the demo's mask is the real segmenter's."""

from __future__ import annotations

import json

import pytest

from tools.bundles import standalone_copy
from tools.rl_bundle import DEMO_COVERAGE, demo_coverage, install_if_better
from vlmsam.engine.registry import CONFIG_NAME

INSTALLED = {"original": 0.65, "rich": 0.59, "heldout": 0.54}


@pytest.fixture(scope="module")
def grounding(tmp_path_factory):
    from tools.bundles import DEFAULT_MODEL_DIR

    return standalone_copy(DEFAULT_MODEL_DIR.parent / "vlmsam-tiny-grounding", tmp_path_factory.mktemp("w") / "start")


def _setup(tmp_path, grounding, new: dict, max_new_tokens: int | None = None):
    import shutil

    bundle = tmp_path / "weights" / "grounding"
    shutil.copytree(grounding, bundle)
    (bundle / "provenance.json").write_text(json.dumps({"made_by": "the start"}))
    (bundle / "eval").mkdir()
    for split, giou in INSTALLED.items():
        name = "metrics.json" if split == "original" else f"metrics-{split}.json"
        (bundle / "eval" / name).write_text(json.dumps({"giou": giou}))
    run = tmp_path / "run"
    shutil.copytree(grounding, run / "final")
    (run / "config.yaml").write_text("train:\n  method: grpo\n")
    if max_new_tokens is not None:  # an answer cut short: no mask for the demo's request
        config = json.loads((run / "final" / CONFIG_NAME).read_text())
        (run / "final" / CONFIG_NAME).write_text(json.dumps({**config, "max_new_tokens": max_new_tokens}))
    for split, giou in new.items():
        (tmp_path / "eval" / f"run-{split}").mkdir(parents=True)
        (tmp_path / "eval" / f"run-{split}" / "metrics.json").write_text(json.dumps({"giou": giou}))
        (tmp_path / "eval" / f"run-{split}" / "predictions.jsonl").write_text("")
        (tmp_path / "eval" / f"run-{split}" / "summary.png").write_bytes(b"png")
    return bundle, run, tmp_path / "eval" / "run-original"


def test_the_bundled_weights_cover_the_demo_target(grounding):
    covered, iou = demo_coverage(grounding)
    assert covered >= DEMO_COVERAGE and 0 < iou <= covered


def test_a_run_better_on_the_sum_and_right_on_the_demo_is_installed(tmp_path, grounding):
    bundle, run, ev = _setup(tmp_path, grounding, {"original": 0.64, "rich": 0.60, "heldout": 0.56})  # -0.01, +0.03
    assert install_if_better(run, bundle, ev, records=tmp_path / "records")
    assert "make box-prompt-model-grpo" in json.loads((bundle / "provenance.json").read_text())["made_by"]
    assert json.loads((bundle / "eval" / "metrics-heldout.json").read_text())["giou"] == 0.56
    assert (tmp_path / "records" / "grounding" / "rich" / "predictions.jsonl").is_file()


def test_a_run_worse_on_the_sum_stays_out(tmp_path, grounding, capsys):
    bundle, run, ev = _setup(tmp_path, grounding, {"original": 0.66, "rich": 0.58, "heldout": 0.53})  # +0.01, -0.02
    assert not install_if_better(run, bundle, ev, records=tmp_path / "records")
    assert json.loads((bundle / "eval" / "metrics.json").read_text())["giou"] == 0.65
    assert "the installed bundle stays" in capsys.readouterr().out


def test_a_run_better_on_paper_whose_demo_misses_the_target_stays_out(tmp_path, grounding, capsys):
    bundle, run, ev = _setup(tmp_path, grounding, {"original": 0.70, "rich": 0.65, "heldout": 0.60}, max_new_tokens=2)
    assert not install_if_better(run, bundle, ev, records=tmp_path / "records")
    assert "covered less than" in capsys.readouterr().out
    assert json.loads((bundle / "provenance.json").read_text()) == {"made_by": "the start"}
    assert not (tmp_path / "records").exists()


def test_the_ceiling_prompts_each_part_of_the_target_once():
    """tools.grounding_ceiling: one point (inside the part) and one tight box per connected part; specks are dropped."""
    import numpy as np

    from tools.grounding_ceiling import truth_prompts

    truth = np.zeros((40, 60), bool)
    truth[5:15, 5:25] = True  # a 20 x 10 part
    truth[20:36, 40:56] = True  # a 16 x 16 part
    truth[0, 59] = True  # a speck
    points, boxes = truth_prompts(truth)
    assert boxes.tolist() == [[5, 5, 25, 15], [40, 20, 56, 36]]
    assert all(truth[int(y), int(x)] for (x, y), in points)


def test_a_run_rewarded_through_another_sam_brings_it_along(tmp_path, grounding):
    """A run whose final/ names another SAM (here vlmsam-tiny-llmseg's, point-trained) installs with that SAM, shared
    by a path where it is byte for byte the bundled one."""
    from tools.bundles import DEFAULT_MODEL_DIR

    bundle, run, ev = _setup(tmp_path, grounding, {"original": 0.66, "rich": 0.60, "heldout": 0.55})
    llmseg_sam = DEFAULT_MODEL_DIR.parent / "vlmsam-tiny-llmseg" / "sam"
    config = json.loads((run / "final" / CONFIG_NAME).read_text())
    (run / "final" / CONFIG_NAME).write_text(json.dumps({**config, "sam": str(llmseg_sam)}))
    assert install_if_better(run, bundle, ev, records=tmp_path / "records")
    assert (bundle / json.loads((bundle / CONFIG_NAME).read_text())["sam"]).resolve() == llmseg_sam.resolve()
    assert "rewarded through" in json.loads((bundle / "provenance.json").read_text())["sam"]
