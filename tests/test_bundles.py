"""The bundles' workshop (tools/bundles.py): a standalone copy of a bundle that shares a part, evaluations filed
per wording split, the install decision, and soups. Plain files stand in for frozen parts (these functions only move
or compare them); what a soup averages is real safetensors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.bundles import file_evaluation, share_parts, standalone_copy
from vlmsam.engine.registry import CONFIG_NAME


def _bundle(root, name, config, parts):
    for part in parts:
        (root / name / part).mkdir(parents=True)
        (root / name / part / "model.safetensors").write_text(f"{name} {part}")
    (root / name / CONFIG_NAME).write_text(json.dumps(config))
    return root / name


def test_a_standalone_copy_holds_the_parts_its_source_shares(tmp_path):
    base = _bundle(tmp_path / "weights", "base", {"vlm": "vlm", "sam": "sam"}, ("vlm", "sam"))
    other = _bundle(tmp_path / "weights", "other", {"vlm": "vlm", "sam": "../base/sam"}, ("vlm",))
    (other / "eval").mkdir()
    (other / "eval" / "metrics.json").write_text("{}")
    out = standalone_copy(other, tmp_path / "elsewhere" / "start")
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config == {"vlm": "vlm", "sam": "sam"}
    assert (out / "sam" / "model.safetensors").read_text() == "base sam"  # the shared part, copied in
    assert (out / "vlm" / "model.safetensors").read_text() == "other vlm"
    assert not (out / "eval").exists()  # an evaluation belongs to the bundle evaluated, not to its copies
    assert json.loads((other / CONFIG_NAME).read_text())["sam"] == "../base/sam"  # the source is untouched
    assert share_parts(out, ("sam",), base) == ["sam"]  # and the copy is the very part it came from
    assert json.loads((out / CONFIG_NAME).read_text())["sam"] == "../../weights/base/sam"


def test_evaluations_are_filed_per_split(tmp_path):
    bundle = _bundle(tmp_path / "weights", "b", {"vlm": "vlm"}, ("vlm",))
    for split in ("", "heldout"):
        ev = tmp_path / f"eval{split}"
        ev.mkdir()
        (ev / "metrics.json").write_text(json.dumps({"split": split}))
        (ev / "predictions.jsonl").write_text(split)
        (ev / "summary.png").write_bytes(b"png" + split.encode())
        file_evaluation(ev, bundle, tmp_path / "records", split=split)
    assert json.loads((bundle / "eval" / "metrics.json").read_text()) == {"split": ""}
    assert json.loads((bundle / "eval" / "metrics-heldout.json").read_text()) == {"split": "heldout"}
    assert (tmp_path / "records" / "b" / "heldout" / "predictions.jsonl").read_text() == "heldout"
    assert (tmp_path / "records" / "b" / "summary.png").read_bytes() == b"png"


def test_a_stage_installs_only_when_it_beats_the_installed_bundle(tmp_path, capsys):
    """``beats_installed``: the sum of gIoU over the wording splits decides; a split the bundle has no figure for
    counts as 0."""
    import json

    from tools.bundles import beats_installed

    def write(path, giou):
        path.mkdir(parents=True, exist_ok=True)
        (path / "metrics.json").write_text(json.dumps({"giou": giou}))

    bundle = tmp_path / "bundle"
    (bundle / "eval").mkdir(parents=True)
    for name, giou in (("metrics.json", 0.65), ("metrics-rich.json", 0.57), ("metrics-heldout.json", 0.54)):
        (bundle / "eval" / name).write_text(json.dumps({"giou": giou}))
    for split, giou in (("original", 0.63), ("rich", 0.57), ("heldout", 0.54)):
        write(tmp_path / f"new-{split}", giou)
    assert not beats_installed(tmp_path / "new", bundle)
    assert "the installed bundle stays" in capsys.readouterr().out
    write(tmp_path / "new-heldout", 0.57)  # +0.03 held-out outweighs -0.02 original
    assert beats_installed(tmp_path / "new", bundle)
    (bundle / "eval" / "metrics-heldout.json").unlink()
    write(tmp_path / "new-heldout", 0.54)
    assert beats_installed(tmp_path / "new", bundle)

    # make's form: exit 0 installs, 3 keeps the bundle, anything else (here a new figure missing) stops make
    def beats(prefix):
        return subprocess.run([sys.executable, "-m", "tools.bundles", "beats", str(prefix), str(bundle)],
                              cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True).returncode

    assert beats(tmp_path / "new") == 0
    write(tmp_path / "worse-original", 0.1), write(tmp_path / "worse-rich", 0.1), write(tmp_path / "worse-heldout", 0.1)
    assert beats(tmp_path / "worse") == 3
    (tmp_path / "worse-rich" / "metrics.json").unlink()
    assert beats(tmp_path / "worse") not in (0, 3)


def _soup_ingredients(tmp_path, heads):
    from safetensors.torch import save_file

    bundles = []
    for k, head in enumerate(heads):
        b = _bundle(tmp_path, f"run{k}", {"vlm": "vlm", "head_dim": 4}, ("vlm",))
        (b / "vlm" / "model.safetensors").write_text("the same frozen VLM")
        (b / "vlm" / "tokenizer.json").write_text(f"copied beside it {k}")  # not a weight: may differ
        save_file(head, str(b / "head.safetensors"))
        (b / "provenance.json").write_text(json.dumps({"run": f"runs/run{k}", "checkpoint": "step_001000"}))
        (b / "train_config.yaml").write_text(f"train:\n  seed: {k}\n")
        (b / "eval").mkdir()
        (b / "eval" / "metrics.json").write_text("{}")
        bundles.append(b)
    return bundles


def test_a_soup_averages_the_trained_weights_and_keeps_the_frozen_parts(tmp_path):
    import torch
    from safetensors.torch import load_file

    from tools.bundles import soup

    heads = [{"w": torch.randn(3, 4), "b": torch.randn(4)} for _ in range(3)]
    bundles = _soup_ingredients(tmp_path, heads)
    out = soup(bundles, tmp_path / "soup", made_by="averaged")
    averaged = load_file(str(out / "head.safetensors"))
    for key in ("w", "b"):
        torch.testing.assert_close(averaged[key], (heads[0][key] + heads[1][key] + heads[2][key]) / 3)
    assert (out / "vlm" / "model.safetensors").read_text() == "the same frozen VLM"
    assert not (out / "eval").exists()  # the ingredients' evaluations say nothing about the soup
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["made_by"] == "averaged"
    assert [(i["run"], i["checkpoint"], i["seed"]) for i in provenance["soup_of"]] == [
        (f"runs/run{k}", "step_001000", k) for k in range(3)]


def test_a_soup_of_grpo_runs_records_each_run_and_seed(tmp_path):
    """A GRPO run's final/ has no provenance of its own: its ingredient record comes from the run's config.yaml."""
    from tools.bundles import _ingredient

    final = tmp_path / "runs" / "grpo-n" / "final"
    final.mkdir(parents=True)
    (final.parent / "config.yaml").write_text("train:\n  method: grpo\n  seed: 8\n")
    assert _ingredient(final) == {"bundle": str(final), "run": str(final.parent), "checkpoint": None, "seed": 8}
    bare = tmp_path / "elsewhere"
    bare.mkdir()
    assert _ingredient(bare) == {"bundle": str(bare), "run": None, "checkpoint": None, "seed": None}


def test_a_soup_refuses_bundles_that_are_not_runs_of_one_recipe_over_one_frozen_model(tmp_path):
    import torch
    from safetensors.torch import save_file

    from tools.bundles import soup

    def fresh(name):
        return _soup_ingredients(tmp_path / name, [{"w": torch.randn(3, 4)} for _ in range(2)])

    bundles = fresh("frozen")
    (bundles[1] / "vlm" / "model.safetensors").write_text("another VLM")
    with pytest.raises(ValueError, match="vlm differs"):
        soup(bundles, tmp_path / "out")
    bundles = fresh("shape")
    save_file({"w": torch.randn(4, 4)}, str(bundles[1] / "head.safetensors"))
    with pytest.raises(ValueError, match="different tensors"):
        soup(bundles, tmp_path / "out")
    bundles = fresh("files")
    save_file({"w": torch.randn(3, 4)}, str(bundles[1] / "extra.safetensors"))
    with pytest.raises(ValueError, match="other weight files"):
        soup(bundles, tmp_path / "out")
    bundles = fresh("recipe")
    (bundles[1] / CONFIG_NAME).write_text(json.dumps({"vlm": "vlm", "head_dim": 8}))
    with pytest.raises(ValueError, match="differs"):
        soup(bundles, tmp_path / "out")
    bundles = fresh("shared")
    (bundles[0] / CONFIG_NAME).write_text(json.dumps({"vlm": "../base/vlm", "head_dim": 4}))
    with pytest.raises(ValueError, match="name their vlm differently"):
        soup(bundles, tmp_path / "out")


def test_a_soup_averages_a_trained_part_and_keeps_a_shared_one(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from tools.bundles import soup

    (tmp_path / "shared" / "sam").mkdir(parents=True)
    vlms = [{"w": torch.randn(2, 3)} for _ in range(2)]
    bundles = []
    for k, vlm in enumerate(vlms):
        b = _bundle(tmp_path, f"agent{k}", {"vlm": "vlm", "sam": "../shared/sam"}, ("vlm",))
        save_file(vlm, str(b / "vlm" / "model.safetensors"))
        bundles.append(b)
    out = soup(bundles, tmp_path / "agent-soup", trained=("vlm",))
    torch.testing.assert_close(load_file(str(out / "vlm" / "model.safetensors"))["w"], (vlms[0]["w"] + vlms[1]["w"]) / 2)
    assert json.loads((out / CONFIG_NAME).read_text())["sam"] == "../shared/sam"
    with pytest.raises(ValueError, match="leads to other folders"):
        soup(bundles, tmp_path / "elsewhere" / "agent-soup", trained=("vlm",))


def test_a_chained_stage_records_its_own_settings(tmp_path):
    """Stages that start from the installed bundle chain their provenances; each keeps what told it apart."""
    from tools.default_model import stage_settings

    (tmp_path / "config.yaml").write_text("model:\n  vlm: x\ndata:\n  dataset_dir: d\n  synth_absent_anchor: 0.5\n"
                                          "  synth_request_noise: 0.3\ntrain:\n  seed: 6\n  lr: 0.0005\n  epochs: 1\n")
    settings = stage_settings(tmp_path / "config.yaml")
    assert settings["data"] == {"synth_absent_anchor": 0.5, "synth_request_noise": 0.3}
    assert settings["train"]["seed"] == 6 and settings["train"]["lr"] == 0.0005 and settings["train"]["epochs"] == 1
    assert "model" not in settings


def test_two_sams_interpolated_load_as_a_sam_with_each_weight_between_theirs(tmp_path):
    import torch
    from transformers import SamModel

    from tools.bundles import interpolate
    from vlmsam.sam import load_sam_backend
    from vlmsam.sam.tiny import build_tiny_sam

    a, b = build_tiny_sam(seed=0), build_tiny_sam(seed=1)
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    out = interpolate(tmp_path / "a", tmp_path / "b", tmp_path / "mid", 0.25)
    mid = SamModel.from_pretrained(out)
    states = a.state_dict(), b.state_dict()
    for name, value in mid.state_dict().items():
        torch.testing.assert_close(value, 0.75 * states[0][name] + 0.25 * states[1][name])
    assert any(not torch.equal(states[0][n], states[1][n]) for n in states[0])  # the two SAMs differ: the check can fail
    assert json.loads((out / "interpolation.json").read_text())["weights"] == [0.75, 0.25]
    assert isinstance(load_sam_backend(str(out)).model, SamModel)  # what box_prompt loads a bundle's SAM with
    (tmp_path / "b" / "pretrain.json").write_text("{}")  # b's own training record says nothing of the mix
    assert not (interpolate(tmp_path / "a", tmp_path / "b", tmp_path / "mid", 0.25) / "pretrain.json").exists()
    for wrong in (tmp_path / "b", tmp_path / "b" / "mix", tmp_path):  # an input, inside one, around both
        with pytest.raises(ValueError, match="one of the models it mixes"):
            interpolate(tmp_path / "a", tmp_path / "b", wrong, 0.5)
    other = build_tiny_sam(seed=2)
    # a SAM whose one tensor has another dtype: refused before anything is written
    other.mask_decoder.iou_prediction_head.proj_out.weight.data = other.mask_decoder.iou_prediction_head.proj_out.weight.data.double()
    other.save_pretrained(tmp_path / "c")
    with pytest.raises(ValueError, match="different tensors"):
        interpolate(tmp_path / "a", tmp_path / "c", tmp_path / "half", 0.5)
    assert not (tmp_path / "half").exists()
    (tmp_path / "b" / "extra.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="different weight files"):
        interpolate(tmp_path / "a", tmp_path / "b", tmp_path / "bad", 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        interpolate(tmp_path / "a", tmp_path / "a", tmp_path / "bad", 1.5)
