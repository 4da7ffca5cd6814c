"""`python -m tools.pretrain sam`: SAM's promptable task on synthetic scenes, from a from-scratch SamModel."""

from __future__ import annotations

import json

import torch
from transformers import SamModel

from tests.helpers.tools_cli import assert_pretrain_help_states_defaults, run_pretrain
from vlmsam.data.synth import write_synth
from vlmsam.sam.tiny import build_tiny_sam


def test_pretrain_sam_trains_every_part_and_saves_a_loadable_model(tmp_path):
    write_synth(tmp_path / "synth", 40, seed=2, progress=False)
    build_tiny_sam(image_size=64).save_pretrained(tmp_path / "sam")
    proc = run_pretrain("sam", tmp_path / "sam", "--data", tmp_path / "synth", "--out", tmp_path / "out",
                   "--steps", "6", "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr
    assert "held-out IoU" in proc.stdout
    record = json.loads((tmp_path / "out" / "pretrain.json").read_text())
    assert record["steps"] == 6 and 0.0 <= record["val_iou"] <= 1.0
    before = SamModel.from_pretrained(tmp_path / "sam").state_dict()
    after = SamModel.from_pretrained(tmp_path / "out").state_dict()
    assert before.keys() == after.keys()
    for part in ("vision_encoder.", "prompt_encoder.point_embed", "mask_decoder."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(part)), part

    # The same inputs give the same model (prompt sampling and initialisation are seeded).
    run_pretrain("sam", tmp_path / "sam", "--data", tmp_path / "synth", "--out", tmp_path / "again",
            "--steps", "6", "--batch-size", "2")
    again = SamModel.from_pretrained(tmp_path / "again").state_dict()
    assert all(torch.equal(after[k], again[k]) for k in after)


def test_pretrain_sam_bad_input_is_one_line(tmp_path):
    build_tiny_sam(image_size=64).save_pretrained(tmp_path / "sam")
    for args in ([tmp_path / "sam", "--data", tmp_path / "nothing", "--out", tmp_path / "o"],
                 [tmp_path / "missing", "--data", tmp_path, "--out", tmp_path / "o"]):
        proc = run_pretrain("sam", *args, "--steps", "1")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_pretrain_sam_help_states_the_real_defaults():
    from tools.pretrain_sam import PretrainConfig

    assert_pretrain_help_states_defaults("sam", PretrainConfig())


def test_multimask_stage_trains_the_outputs_and_iou_head_the_generator_uses(tmp_path):
    """--multimask: the three multimask outputs and the IoU head learn; with --freeze-image-encoder the
    encoder is unchanged. The IoU head's error on held-out prompts must fall against the start."""
    write_synth(tmp_path / "synth", 40, seed=2, progress=False)
    build_tiny_sam(image_size=64).save_pretrained(tmp_path / "sam")
    proc = run_pretrain("sam", tmp_path / "sam", "--data", tmp_path / "synth", "--out", tmp_path / "out",
                   "--steps", "30", "--batch-size", "4", "--multimask", "--background-share", "0.5",
                   "--point-share", "0.8", "--freeze-image-encoder", "--lr", "0.003")
    assert proc.returncode == 0, proc.stderr
    assert "multimask best-rated" in proc.stdout
    record = json.loads((tmp_path / "out" / "pretrain.json").read_text())
    assert record["multimask"] and 0.0 <= record["val_multimask_best_iou"] <= 1.0
    before = SamModel.from_pretrained(tmp_path / "sam").state_dict()
    after = SamModel.from_pretrained(tmp_path / "out").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("vision_encoder."))
    for part in ("mask_decoder.iou_prediction_head", "mask_decoder.output_hypernetworks_mlps.2",
                 "mask_decoder.output_hypernetworks_mlps.3"):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(part)), part
    assert record["iou_loss"] < record["first_iou_loss"], record
