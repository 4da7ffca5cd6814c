"""The hostile-input table: every numeric option of every command (read from the parser itself, so a new
option is covered the day it is added), every path argument given a missing path, a directory for a
file, a file for a directory, an empty file, random bytes, and the wrong JSON; environment variables
with garbage. Each must end as one line naming the option or the file, exit code 2, no traceback.

Commands run in this process through ``vlmsam.cli.main.main`` (the real entry point, one import of
torch for the whole table); ``tests/test_hostile.py`` runs a sample of the same as real processes."""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path

import pytest

from vlmsam.cli import types as cli_types
from vlmsam.cli.main import build_parser, main

HOSTILE_NUMBERS = ["abc", "nan", "inf", "-inf", "1e30", "-1", ""]


def _subcommands(parser: argparse.ArgumentParser, prefix=()):
    """(argv prefix, subparser) for every leaf command."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for name, sub in subs[0].choices.items():
        yield from _subcommands(sub, (*prefix, name))


def _numeric_options():
    for prefix, sub in _subcommands(build_parser()):
        for action in sub._actions:
            if action.option_strings and action.type not in (None, str) and action.type is not Path:
                yield prefix, action


NUMERIC = list(_numeric_options())


def run(argv, capsys) -> tuple[int, list[str]]:
    import transformers

    transformers.utils.logging.disable_progress_bar()  # as the CLI's environment does in a fresh process
    transformers.utils.logging.set_verbosity_error()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    # progress bars (tqdm redraws with \r on a terminal) are not messages
    return rc, [line for line in err.strip().splitlines() if line.strip() and not re.search(r"\d+%\|", line)]


def assert_one_line(rc, lines, *words):
    assert rc == 2, (rc, lines)
    assert len(lines) == 1, lines
    assert lines[0].startswith("vlmsam ") and "error" in lines[0], lines
    for w in words:
        assert str(w) in lines[0], (w, lines)


def test_every_numeric_option_is_checked_where_it_enters():
    assert len(NUMERIC) >= 25  # 28 since the pre-training commands moved to tools/ (python -m tools.pretrain)
    loose = [f"{' '.join(p)} {a.option_strings[-1]}" for p, a in NUMERIC if a.type in (int, float)]
    assert not loose, f"options typed plain int/float (no range, NaN passes): {loose}"


@pytest.mark.parametrize("value", HOSTILE_NUMBERS)
def test_hostile_numbers_are_one_line_at_parse_time(value, capsys):
    for prefix, action in NUMERIC:
        option = action.option_strings[-1]
        rc, lines = run([*prefix, f"{option}={value}"], capsys)  # every numeric option is non-negative
        assert_one_line(rc, lines, option)


def test_range_types_keep_good_values():
    assert cli_types.fraction("0.5") == 0.5 and cli_types.positive(" 3 ") == 3 and cli_types.port("8000") == 8000
    for bad in ("0", "-2", "1.5", "1e3"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli_types.positive(bad)
    for bad in ("1.01", "-0.1", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli_types.fraction(bad)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    from tests.helpers.dataset_trees import write_reason_seg
    from tests.helpers.tiny_segmenters import save_tiny_seg_checkpoint

    r = tmp_path_factory.mktemp("table")
    save_tiny_seg_checkpoint(r)
    write_reason_seg(r / "data")
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(r / "img.png")
    (r / "empty_dir").mkdir()
    (r / "empty.bin").write_bytes(b"")
    (r / "garbage.bin").write_bytes(os.urandom(3000))
    (r / "text.txt").write_text("just some words\n")
    (r / "null.json").write_text("null")
    (r / "list.json").write_text("[1, 2, 3]")
    (r / "nan.json").write_text('{"x": NaN, "y": 1e999}')
    (r / "truncated.json").write_text('[{"id": "a", "image": "x.jpg", "conversations": [')
    (r / "latin1.txt").write_bytes("caf\xe9 \xff\xfe".encode("latin-1"))
    (r / "null_lines.jsonl").write_text('null\n[1]\n{"image": 3, "request": null}\n')
    (r / "config_list.yaml").write_text("- 1\n- 2\n")
    (r / "config_types.yaml").write_text("model:\n  lora_r: [1, 2]\n")
    (r / "config_nan.yaml").write_text("train:\n  lr: .nan\n")
    (r / "preds_bad.jsonl").write_text('{"image": "street", "query": "What would stop traffic?", "answer": "", "masks": [{"size": [30000, 30000], "counts": "0"}]}\n')
    # A ReasonSeg tree whose one annotation has a NaN coordinate and whose other one says shapes: null.
    bad = r / "bad_data" / "reason_seg" / "ReasonSeg" / "val"
    bad.mkdir(parents=True)
    Image.new("RGB", (50, 40)).save(bad / "a.jpg")
    (bad / "a.json").write_text('{"text": ["x"], "is_sentence": false, "shapes": [{"label": "t", "points": [[1, NaN], [5, 5], [1, 5]]}]}')
    Image.new("RGB", (50, 40)).save(bad / "b.jpg")
    (bad / "b.json").write_text('{"text": ["x"], "is_sentence": false, "shapes": 5}')
    return r


FILES = ["missing", "empty_dir", "empty.bin", "garbage.bin", "text.txt", "null.json", "list.json", "nan.json", "truncated.json",
         "latin1.txt"]
NOT_A_DIR = ["missing", "garbage.bin", "text.txt"]  # where a directory must exist
NOT_AN_OUT_DIR = ["text.txt"]  # an output directory that is a file


def _cases():
    """(id, argv with {X} for the hostile path, hostile names, words expected besides the name)."""
    ck, sam, data, img = "{r}/ckpt", "{r}/sam", "{r}/data", "{r}/img.png"
    out = "{r}/out_{n}"
    yield "segment IMAGE", ["segment", "{X}", "the cup", "--model", ck, "--out", out], FILES, ()
    yield "segment --model", ["segment", img, "the cup", "--model", "{X}", "--out", out], NOT_A_DIR + ["empty_dir"], ()
    yield "segment --out", ["segment", img, "the cup", "--model", ck, "--out", "{X}"], NOT_AN_OUT_DIR, ()
    yield "segment --requests", ["segment", "--model", ck, "--requests", "{X}", "--out", out], \
        ["missing", "empty.bin", "garbage.bin", "text.txt", "null.json", "list.json", "nan.json", "truncated.json",
         "latin1.txt", "null_lines.jsonl", "empty_dir"], ()
    yield "sam IMAGE", ["sam", "{X}", "--sam", sam, "--box", "1,1,9,9", "--out", out], FILES, ()
    yield "sam --sam", ["sam", img, "--sam", "{X}", "--box", "1,1,9,9", "--out", out], NOT_A_DIR + ["empty_dir"], ()
    yield "sam --out", ["sam", img, "--sam", sam, "--box", "1,1,9,9", "--out", "{X}"], NOT_AN_OUT_DIR, ()
    yield "evaluate --dataset-dir", ["evaluate", "--model", ck, "--dataset", "reason_seg:val", "--dataset-dir", "{X}", "--out", out], \
        NOT_A_DIR + ["empty_dir"], ()
    yield "evaluate --model", ["evaluate", "--model", "{X}", "--dataset", "reason_seg:val", "--dataset-dir", data, "--out", out], \
        NOT_A_DIR + ["empty_dir"], ()
    yield "evaluate bad annotations", ["evaluate", "--model", ck, "--dataset", "reason_seg:val", "--dataset-dir", "{X}", "--out", out],\
        ["bad_data"], ("no request could be evaluated", "a.json")
    yield "score --predictions", ["score", "--predictions", "{X}", "--dataset", "reason_seg:val", "--dataset-dir", data, "--out", out], \
        ["missing", "empty_dir", "garbage.bin", "text.txt", "null.json", "list.json", "truncated.json", "null_lines.jsonl",
         "preds_bad.jsonl"], ()
    yield "score --out", ["score", "--predictions", "{r}/preds_bad.jsonl", "--dataset", "reason_seg:val", "--dataset-dir", data,
                          "--out", "{X}"], NOT_AN_OUT_DIR, ()
    yield "train CONFIG", ["train", "{X}"], ["missing", "empty_dir", "garbage.bin", "null.json", "list.json", "config_list.yaml",
                                             "truncated.json", "latin1.txt"], ()
    yield "train config key", ["train", "{X}"], ["config_types.yaml"], ("model.lora_r",)
    yield "train config NaN", ["train", "{X}"], ["config_nan.yaml"], ("train.lr",)
    yield "data check", ["data", "check", "--dataset-dir", "{X}"], NOT_A_DIR + ["empty_dir"], ()
    yield "data synth --out", ["data", "synth", "--out", "{X}", "--n", "2"], NOT_AN_OUT_DIR, ()
    yield "convert-llava-plus IN", ["data", "convert-llava-plus", "{X}", out + ".json", "--image-root", "{r}"], FILES, ()
    yield "convert-llava-plus --image-root", ["data", "convert-llava-plus", "{r}/list.json", out + ".json", "--image-root", "{X}"], \
        ["garbage.bin", "text.txt"], ()  # a missing root is fine: annotations may be converted before the images arrive
    yield "convert-sam IN", ["convert-sam", "{X}", out], ["missing", "empty_dir", "empty.bin", "garbage.bin", "text.txt"], ()
    yield "convert-sam OUT", ["convert-sam", "{r}/garbage.bin", "{X}"], NOT_AN_OUT_DIR, ()
    yield "merge-lora CHECKPOINT", ["merge-lora", "{X}", out], NOT_A_DIR + ["empty_dir"], ()
    yield "merge-lora OUT", ["merge-lora", ck, "{X}"], NOT_AN_OUT_DIR, ()
    yield "proposals --dataset-dir", ["proposals", "--dataset-dir", "{X}", "--datasets", "reason_seg:val", "--out", out, "--sam", sam], \
        NOT_A_DIR + ["empty_dir"], ()
    yield "proposals --sam", ["proposals", "--dataset-dir", data, "--datasets", "reason_seg:val", "--out", out, "--sam", "{X}"], \
        NOT_A_DIR + ["empty_dir"], ()
    yield "proposals --out", ["proposals", "--dataset-dir", data, "--datasets", "reason_seg:val", "--out", "{X}", "--sam", sam], \
        NOT_AN_OUT_DIR, ()
    yield "serve --model", ["serve", "--model", "{X}", "--port", "1"], NOT_A_DIR + ["empty_dir"], ()


CASES = [(f"{name} <- {x}", argv, x, words) for name, argv, xs, words in _cases() for x in xs]


def test_the_table_is_large():
    assert len(CASES) + len(NUMERIC) * len(HOSTILE_NUMBERS) >= 150, len(CASES)


@pytest.mark.parametrize("name, argv, x, words", CASES, ids=[c[0] for c in CASES])
def test_hostile_paths_are_one_line(hostile, name, argv, x, words, capsys):
    n = abs(hash(name)) % 10**8
    path = hostile / x
    argv = [a.replace("{X}", str(path)).replace("{r}", str(hostile)).replace("{n}", str(n)) for a in argv]
    rc, lines = run(argv, capsys)
    assert_one_line(rc, lines, *(words or (x,)))
    shutil.rmtree(hostile / f"out_{n}", ignore_errors=True)


@pytest.mark.parametrize("name, value", [("VLMSAM_MAX_IMAGE_PIXELS", "lots"), ("VLMSAM_MAX_IMAGE_PIXELS", "0"),
                                         ("VLMSAM_MAX_IMAGE_PIXELS", "1e30")])
def test_hostile_environment_is_one_line(hostile, name, value, capsys, monkeypatch):
    monkeypatch.setenv(name, value)
    rc, lines = run(["sam", hostile / "img.png", "--sam", hostile / "sam", "--box", "1,1,9,9", "--out", hostile / "env_out"], capsys)
    assert_one_line(rc, lines, name)


@pytest.mark.parametrize("value", ["two", "0", "-3"])
def test_hostile_world_size_is_one_line(hostile, value, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", value)
    rc, lines = run(["proposals", "--dataset-dir", hostile / "data", "--datasets", "reason_seg:val", "--out", hostile / "ws",
                     "--sam", hostile / "sam"], capsys)
    assert_one_line(rc, lines, "WORLD_SIZE")
