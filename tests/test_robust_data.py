"""Hostile dataset trees and prediction files: `data check`, `evaluate` and `score` run the same
per-sample checks, skip and count the same bad samples (or stop at the first with --on-bad-sample
error), and never answer with a traceback."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.helpers import dataset_trees as trees
from vlmsam.data.check import run_check
from vlmsam.data.reason_seg import ReasonSegDataset
from vlmsam.data.sample import BadSample
from vlmsam.data.validate import load_checked
from vlmsam.errors import VlmsamError
from vlmsam.evaluation.evaluate import evaluate, score_predictions
from vlmsam.io.writer import mask_to_rle

GOOD = {"text": ["the sign"], "is_sentence": False, "shapes": [{"label": "sign", "points": [[1, 2], [8, 2], [8, 9], [1, 9]]}]}
DEEP = "[" * 100_000 + "]" * 100_000


def val_dir(root):
    return root / "reason_seg" / "ReasonSeg" / "val"


def add(root, stem, anno, image=True):
    """One more val sample: ``anno`` (a dict, or raw text) beside a copy of the street image."""
    folder = val_dir(root)
    if image:
        (folder / f"{stem}.jpg").write_bytes((folder / "street.jpg").read_bytes())
    (folder / f"{stem}.json").write_text(anno if isinstance(anno, str) else json.dumps(anno))


# Each bad sample, what makes it bad, and the words that name its fault.
BAD = {
    "deep": (DEEP, "nested deeper than 64"),
    "kind_list": ({**GOOD, "kind": ["attribute"]}, "field 'kind'"),
    "kind_object": ({**GOOD, "kind": {"a": 1}}, "field 'kind'"),
    "shapes_null": ({**GOOD, "shapes": None}, "field 'shapes'"),
    "text_empty": ({**GOOD, "text": [""]}, "field 'text' item 0"),
    "text_blank": ({**GOOD, "text": ["  \n\t "]}, "field 'text' item 0"),
    "text_long": ({**GOOD, "text": ["x" * 30_000]}, "30,000 characters"),
    "nan_point": ('{"text": ["a"], "shapes": [{"label": "a", "points": [[NaN, 1], [2, 3], [4, 5]]}]}', "NaN"),
    "surrogate": ('{"text": ["\\udcff"], "shapes": []}', "lone surrogate"),
    "sentence_str": ({**GOOD, "is_sentence": "yes"}, "field 'is_sentence'"),
}


@pytest.fixture
def hostile(tmp_path):
    """The fixture tree's val split (one good image) plus every bad sample above, a 1x20000 PNG, a FIFO
    named as an image, and a sample whose image is missing."""
    trees.write_reason_seg(tmp_path)
    for stem, (anno, _) in BAD.items():
        add(tmp_path, stem, anno)
    Image.new("RGB", (20000, 1)).save(val_dir(tmp_path) / "strip.png")
    add(tmp_path, "strip", GOOD, image=False)
    os.mkfifo(val_dir(tmp_path) / "fifo.png")
    add(tmp_path, "fifo", GOOD, image=False)
    add(tmp_path, "nothing", GOOD, image=False)
    return tmp_path


def expected_bad(root) -> set[str]:
    return {f"{stem}.json" for stem in BAD} | {"strip.png", "fifo.png", "nothing.jpg"}


def test_every_bad_sample_is_named_and_the_good_one_passes(hostile):
    ds = ReasonSegDataset(hostile, "val")
    faults = {}
    for i in range(len(ds)):
        try:
            load_checked(ds, i)
        except BadSample as exc:
            faults[exc.path.split("/")[-1]] = (exc.kind, exc.reason)
    assert set(faults) == expected_bad(hostile)  # street is the one good sample
    for stem, (_, words) in BAD.items():
        assert words in faults[f"{stem}.json"][1], (stem, faults[f"{stem}.json"])
        assert faults[f"{stem}.json"][0] == "broken annotations"
    assert faults["strip.png"][0] == "unreadable images" and "aspect ratio" in faults["strip.png"][1]
    assert faults["fifo.png"][0] == "unreadable images" and "not a regular file" in faults["fifo.png"][1]
    assert faults["nothing.jpg"] == ("missing images", "not found")


def test_data_check_lists_them_all_or_stops_at_the_first(hostile):
    printed = []
    assert run_check(hostile, ["reason_seg"], print_fn=printed.append, progress=False) is False
    out = "\n".join(printed)
    assert f"reason_seg:val: {len(expected_bad(hostile))} bad sample(s) (1 missing images, 2 unreadable images, " \
           f"{len(BAD)} broken annotations)" in out
    for name in expected_bad(hostile):
        assert f"{val_dir(hostile) / name}: " in out
    assert "all datasets usable" not in out
    with pytest.raises(BadSample):
        run_check(hostile, ["reason_seg"], print_fn=lambda _: None, progress=False, on_bad_sample="error")
    proc = run_cli("data", "check", "--dataset-dir", hostile, "--datasets", "reason_seg", "--on-bad-sample", "error")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and ".json: " in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def engine():
    from vlmsam import load_segmenter

    return load_segmenter(None).engine  # the bundled vlmsam-tiny


def test_evaluate_skips_and_counts_what_data_check_lists(hostile, engine, tmp_path):
    ds = ReasonSegDataset(hostile, "val")
    metrics = evaluate(engine, ds, out_dir=tmp_path / "o", progress=False, max_new_tokens=4)
    assert metrics["n"] == 1  # street, the one good sample: scored, with its predictions written
    assert metrics["skipped_samples"] == {"count": len(expected_bad(hostile)), "by_reason": {
        "missing images": 1, "unreadable images": 2, "broken annotations": len(BAD)}}
    saved = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert saved["skipped_samples"] == metrics["skipped_samples"]
    assert [json.loads(x)["image"] for x in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()] == ["street"]
    with pytest.raises(BadSample, match=r"\.json: |\.png: |\.jpg: "):
        evaluate(engine, ds, progress=False, max_new_tokens=4, on_bad_sample="error")


def test_score_skips_and_counts_the_same(hostile, tmp_path):
    expected = trees.write_reason_seg(tmp_path / "clean")  # the street target, drawn independently
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"image": "street", "query": "What would stop traffic?", "answer": "",
                                 "masks": [mask_to_rle(expected["street"].astype(bool))]}) + "\n")
    ds = ReasonSegDataset(hostile, "val")
    m = score_predictions(preds, ds, tmp_path / "o", progress=False)
    assert m["n"] == 1 and m["giou"] == pytest.approx(1.0, abs=1e-4) and m["missing"] == 0
    assert m["skipped_samples"]["count"] == len(expected_bad(hostile))
    proc = run_cli("score", "--predictions", preds, "--dataset", "reason_seg:val", "--dataset-dir", hostile, "--out",
                   tmp_path / "e", "--on-bad-sample", "error")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_score_refuses_a_deeply_nested_predictions_file(tmp_path):
    trees.write_reason_seg(tmp_path)
    preds = tmp_path / "p.jsonl"
    for content in (DEEP + "\n", json.dumps({"image": "street", "query": "q"}) + "\n" + DEEP[:20000] + "\n"):
        preds.write_text(content)
        proc = run_cli("score", "--predictions", preds, "--dataset", "reason_seg:val", "--dataset-dir", tmp_path, "--out", tmp_path / "o")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and "nested deeper than 64" in proc.stderr, proc.stderr[-2000:]


def test_other_dataset_files_are_read_bounded(tmp_path):
    """Explanatory answers, VQA lists, COCO instances, class lists: deep nesting or the wrong type is one
    error naming the file, never a RecursionError or a TypeError."""
    trees.write_reason_seg(tmp_path)
    explanatory = tmp_path / "reason_seg" / "ReasonSeg" / "explanatory" / "train.json"
    for content, words in [(DEEP, "nested deeper"), ('[{"image": ["x"], "outputs": 1}]', "entry 0"), ("{}", "JSON object")]:
        explanatory.write_text(content)
        with pytest.raises(VlmsamError, match=words):
            ReasonSegDataset(tmp_path, "train")
    trees.write_vqa(tmp_path)
    from vlmsam.data.vqa import VqaDataset

    vqa = tmp_path / "llava_dataset" / "llava_instruct_150k.json"
    vqa.write_text(DEEP)
    with pytest.raises(BadSample, match="nested deeper"):
        VqaDataset(tmp_path, "llava_instruct_150k.json")
    vqa.write_text(json.dumps([{"image": ["a.jpg"], "conversations": []}, {"image": {"x": 1}}]))
    assert len(VqaDataset(tmp_path, "llava_instruct_150k.json")) == 0  # entries without an image name are not samples
    trees.write_refer(tmp_path)
    (tmp_path / "refer_seg" / "refcoco" / "instances.json").write_text(DEEP)
    from vlmsam.data.refer_seg import ReferSegDataset

    with pytest.raises(BadSample, match="nested deeper"):
        ReferSegDataset(tmp_path, "refcoco", "val")


def test_huge_integer_coordinates_are_a_broken_annotation(tmp_path):
    trees.write_reason_seg(tmp_path)
    add(tmp_path, "huge", '{"text": ["a"], "shapes": [{"label": "a", "points": [[1' + "0" * 400 + ', 1], [2, 3], [4, 5]]}]}')
    ds = ReasonSegDataset(tmp_path, "val")
    with pytest.raises(BadSample, match="not a finite image coordinate"):
        load_checked(ds, [p.stem for p in ds.items].index("huge"))
    assert np.array_equal(load_checked(ds, [p.stem for p in ds.items].index("street"))[0].masks[0].shape, (40, 50))


def test_score_names_a_negative_run_as_such(tmp_path):
    """Runs that add up to the right total but include a negative one: the message says which."""
    trees.write_reason_seg(tmp_path)
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"image": "street", "query": "What would stop traffic?", "answer": "",
                                 "masks": [{"size": [40, 50], "counts": [-5, 2005]}]}) + "\n")
    with pytest.raises(VlmsamError, match=r"not usable \(RLE run 0 is negative \(-5\)"):
        score_predictions(preds, ReasonSegDataset(tmp_path, "val"), progress=False)


def test_score_never_overwrites_a_file_it_did_not_write(tmp_path):
    trees.write_reason_seg(tmp_path)
    preds, out = tmp_path / "p.jsonl", tmp_path / "o"
    preds.write_text("")
    out.mkdir()
    (out / "metrics.json").write_text("mine")
    with pytest.raises(VlmsamError, match="was not written by vlmsam"):
        score_predictions(preds, ReasonSegDataset(tmp_path, "val"), out, progress=False)
    assert (out / "metrics.json").read_text() == "mine"
    (out / "metrics.json").unlink()
    score_predictions(preds, ReasonSegDataset(tmp_path, "val"), out, progress=False)
    score_predictions(preds, ReasonSegDataset(tmp_path, "val"), out, progress=False)  # its own files: replaced
    assert json.loads((out / "metrics.json").read_text())["missing"] == 1
