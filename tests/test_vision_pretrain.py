"""`python -m tools.pretrain vision`: every visual token of a from-scratch Qwen-VL learns the colour and
shape kind it shows, on synthetic scenes."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from tests.helpers.tools_cli import assert_pretrain_help_states_defaults, run_pretrain
from vlmsam.data.synth import COLORS, SHAPES, write_synth
from tools.pretrain_vision import VisionPretrainConfig, cell_targets, shape_shares
from vlmsam.vlm.tiny import save_tiny_vlm


def _square(x0, y0, x1, y1, color, shape="square"):
    """Pixels x0..x1, y0..y1 inclusive (polygon outlines are filled)."""
    return {"shape": shape, "color": color, "points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]}


def test_cell_targets_are_pixel_shares_in_row_major_cells():
    # 64 x 96 image, 16-pixel cells: 4 rows x 6 columns. A red square fills cell (0, 5) exactly;
    # a blue star covers the left half of cell (2, 0); a black square, painted later, hides it.
    scene = [_square(80, 0, 95, 15, "red"), _square(0, 32, 7, 47, "blue", "star"), _square(0, 56, 15, 63, "black")]
    colour, kind = cell_targets(scene, shape_shares(scene, (64, 96), (64, 96), 16))
    assert colour.shape == (24, len(COLORS) + 1) and kind.shape == (24, len(SHAPES) + 1)
    np.testing.assert_allclose(colour.sum(-1), 1.0, atol=1e-6)
    red, blue, black = (1 + list(COLORS).index(c) for c in ("red", "blue", "black"))
    assert colour[5, red] == 1.0 and kind[5, 1 + SHAPES.index("square")] == 1.0
    assert colour[12, blue] == 0.5 and colour[12, 0] == 0.5 and kind[12, 1 + SHAPES.index("star")] == 0.5
    assert colour[18, black] == 0.5  # the bottom half of cell (3, 0)
    untouched = [k for k in range(24) if k not in (5, 12, 18)]
    assert (colour[untouched, 0] == 1.0).all() and (kind[untouched, 0] == 1.0).all()
    # The model's input is a resize of the original: the shares follow the resized pixels.
    colour_big, _ = cell_targets(scene, shape_shares(scene, (64, 96), (128, 192), 32))
    np.testing.assert_allclose(colour_big, colour, atol=1e-6)


def test_visual_tokens_come_in_the_row_major_cell_order_cell_targets_assume(tmp_path):
    # The merger joins each run of merge_size**2 consecutive patch rows into one token; the image
    # processor must put the patches of cell (r, c) at run r * columns + c.
    from vlmsam.vlm.processor import VlmProcessor

    save_tiny_vlm(tmp_path / "vlm", image_pixels=56 * 84)
    processor = VlmProcessor.from_pretrained(tmp_path / "vlm")
    pixels = np.zeros((56, 84, 3), np.uint8)
    pixels[28:56, 56:84] = 255  # cell (1, 2) of a 2 x 3 grid of 28-pixel cells
    values, grid, n_tokens = processor.image_inputs(Image.fromarray(pixels))
    assert tuple(grid[0].tolist()) == (1, 4, 6) and n_tokens == 6
    per_token = values.reshape(n_tokens, 4, -1).mean(dim=(1, 2))
    assert int(per_token.argmax()) == 1 * 3 + 2
    assert (per_token[torch.arange(6) != 5] < per_token[5] - 1).all()


def test_pretrain_vision_trains_the_tower_only_and_saves_a_loadable_vlm(tmp_path):
    write_synth(tmp_path / "synth", 40, seed=3, progress=False)
    save_tiny_vlm(tmp_path / "vlm")
    args = ("vision", tmp_path / "vlm", "--data", tmp_path / "synth", "--steps", "4", "--batch-size", "2")
    proc = run_pretrain(*args, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "colour accuracy" in proc.stdout
    record = json.loads((tmp_path / "out" / "pretrain.json").read_text())
    assert record["steps"] == 4 and 0.0 <= record["val_colour_acc"] <= 1.0 and record["visual_token_norm"] > 0
    assert record["val_position_error"] >= 0 and len(record["history"]) == 1
    before = AutoModelForImageTextToText.from_pretrained(tmp_path / "vlm").state_dict()
    after = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").state_dict()
    assert before.keys() == after.keys()
    visual = [k for k in before if ".visual." in k or k.startswith("visual.")]
    assert visual and all(not torch.equal(before[k], after[k]) for k in visual if "merger" in k and "weight" in k)
    assert all(torch.equal(before[k], after[k]) for k in before if k not in visual)  # the LM is untouched
    assert (tmp_path / "out" / "tokenizer.json").is_file() and (tmp_path / "out" / "pretrain_head.safetensors").is_file()

    run_pretrain(*args, "--out", tmp_path / "again")
    again = AutoModelForImageTextToText.from_pretrained(tmp_path / "again").state_dict()
    assert all(torch.equal(after[k], again[k]) for k in after)


def test_pretrain_vision_bad_input_is_one_line(tmp_path):
    save_tiny_vlm(tmp_path / "vlm")
    for args in ([tmp_path / "vlm", "--data", tmp_path / "nothing", "--out", tmp_path / "o"],
                 [tmp_path / "missing", "--data", tmp_path, "--out", tmp_path / "o"]):
        proc = run_pretrain("vision", *args, "--steps", "1")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_pretrain_vision_help_states_the_real_defaults():
    assert_pretrain_help_states_defaults("vision", VisionPretrainConfig(), extra=("--kind-weight", "--position-weight"))
