"""`vlmsam score` on crafted predictions: hand-computed gIoU / cIoU."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.helpers import dataset_trees as trees
from vlmsam.io.writer import mask_to_rle


def _line(image, query, masks):
    return json.dumps({"image": image, "query": query, "answer": "[SEG].", "masks": [mask_to_rle(m) for m in masks]})


def test_score_reason_seg_by_hand(tmp_path):
    expected = trees.write_reason_seg(tmp_path)
    val = tmp_path / "reason_seg" / "ReasonSeg" / "val"
    # A second, short-query image whose target is an 8x8 box (64 px) plus an ignore band.
    (val / "cup.jpg").write_bytes((val / "street.jpg").read_bytes())
    (val / "cup.json").write_text(json.dumps({"text": ["the cup"], "is_sentence": False, "shapes": [
        {"label": "cup", "points": [[10, 10], [17, 10], [17, 17], [10, 17]]},
        {"label": "ignore", "points": [[30, 0], [39, 0], [39, 39], [30, 39]]}]}))
    street = expected["street"].astype(bool)  # 8x8 = 64 px (inclusive corners 1..8, 2..9)
    assert street.sum() == 64
    h, w = street.shape
    # street: predict the target's left half -> I = 32, U = 64, IoU = 0.5
    half = street.copy()
    half[:, 5:] = False
    # cup: the target (64 px) as two masks plus 16 px outside it, and 20 px inside the ignore band
    a = np.zeros((h, w), bool); a[10:18, 10:14] = True
    b = np.zeros((h, w), bool); b[10:18, 14:18] = True; b[0:2, 0:8] = True; b[0:2, 30:40] = True
    preds = tmp_path / "p.jsonl"
    preds.write_text(_line("street", "What would stop traffic?", [half]) + "\n" + _line("cup", "the cup", [a, b]) + "\n"
                     + _line("ghost", "not a request", []) + "\n")
    proc = run_cli("score", "--predictions", preds, "--dataset", "reason_seg:val", "--dataset-dir", tmp_path, "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    iou_street, iou_cup = 32 / (64 + 1e-5), 64 / (80 + 1e-5)
    assert m["n"] == 2 and m["missing"] == 0 and m["unmatched"] == 1
    assert m["giou"] == pytest.approx((iou_street + iou_cup) / 2, abs=1e-9)
    assert m["ciou"] == pytest.approx((32 + 64) / (64 + 80 + 1e-10), abs=1e-9)
    assert m["long_query"]["giou"] == pytest.approx(iou_street) and m["short_query"]["giou"] == pytest.approx(iou_cup)
    assert (tmp_path / "o" / "summary.png").stat().st_size > 1000
    from PIL import Image

    from vlmsam.evaluation.summary import TILE

    sheet = Image.open(tmp_path / "o" / "summary.png")
    assert sheet.size == (60 + 2 * TILE, TILE + 44)  # two requests: both have masks, shown once each, one row

    # A request with no prediction scores as an empty mask (IoU 0 against a non-empty target).
    preds.write_text(_line("cup", "the cup", [a, b]) + "\n")
    proc = run_cli("score", "--predictions", preds, "--dataset", "reason_seg:val", "--dataset-dir", tmp_path, "--out", tmp_path / "o2")
    m = json.loads((tmp_path / "o2" / "metrics.json").read_text())
    assert m["missing"] == 1 and m["giou"] == pytest.approx(iou_cup / 2)


def test_score_refcoco_duplicate_queries_and_bad_files(tmp_path):
    expected = trees.write_refer(tmp_path)
    target = expected[102].astype(bool)
    preds = tmp_path / "p.jsonl"
    stem = "COCO_train2014_000000000002"
    preds.write_text(_line(stem, "small box", [target]) + "\n" + _line(stem, "top left box", [np.zeros_like(target)]) + "\n")
    proc = run_cli("score", "--predictions", preds, "--dataset", "refcoco|unc|val", "--dataset-dir", tmp_path, "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["n"] == 2 and m["giou"] == pytest.approx(0.5, abs=1e-6) and m["ciou"] == pytest.approx(25 / 50)
    assert "short_query" not in m
    for content, words in [("{not json\n", "p.jsonl:1: not a prediction line"),
                           (json.dumps({"image": stem}) + "\n", "p.jsonl:1: not a prediction line"),
                           (_line(stem, "small box", [np.ones((3, 3), bool)]) + "\n", "RLE of size 3x3 for an image of 40x30"),
                           # a 100-byte line claiming a 30000 x 30000 mask is refused before anything is decoded
                           (json.dumps({"image": stem, "query": "small box", "answer": "",
                                        "masks": [{"size": [30000, 30000], "counts": "0Wj9"}]}) + "\n", "30000x30000"),
                           (json.dumps({"image": stem, "query": "small box", "answer": "",
                                        "masks": [{"size": [30, 40], "counts": [5, 5]}]}) + "\n", "add up to 10 pixels, not 1,200")]:
        preds.write_text(content)
        proc = run_cli("score", "--predictions", preds, "--dataset", "refcoco|unc|val", "--dataset-dir", tmp_path, "--out", tmp_path / "x")
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    proc = run_cli("score", "--predictions", tmp_path / "none.jsonl", "--dataset", "refcoco|unc|val", "--dataset-dir", tmp_path, "--out", tmp_path / "x")
    assert proc.returncode == 2 and "none.jsonl: no such file" in proc.stderr


def test_scorer_no_mask_rates_by_kind():
    # Two no-target requests (one answered with no mask) and three real ones (one refused):
    # the no-target rate alone would hide the refusal, so both are reported.
    from vlmsam.evaluation.scoring import Scorer

    scorer = Scorer(split_by_length=True)
    target, empty = np.zeros((4, 4), np.uint8), np.zeros((0, 4, 4), bool)
    target[:2, :2] = 1
    hit, stray = target[None].astype(bool), np.ones((1, 4, 4), bool)
    scorer.update(empty, np.zeros_like(target), False, "none")
    scorer.update(stray, np.zeros_like(target), True, "none")
    scorer.update(hit, target, False, "attribute")
    scorer.update(empty, target, False, "attribute")
    scorer.update(hit, target, True, "relation")
    m = scorer.metrics()
    assert m["no_target_no_mask_rate"] == pytest.approx(1 / 2)
    assert m["real_target_no_mask_rate"] == pytest.approx(1 / 3)
    # LISA's IoU adds 1e-5 to the union, hence the tolerance.
    assert m["by_kind"]["attribute"]["giou"] == pytest.approx(0.5, abs=1e-4)
    assert m["by_kind"]["relation"]["giou"] == pytest.approx(1.0, abs=1e-4)
    assert m["n"] == 5 and "uniqueness" not in m["by_kind"]

    plain = Scorer(split_by_length=False)  # requests without a kind (real benchmarks): no rates
    plain.update(hit, target, False)
    assert "no_target_no_mask_rate" not in plain.metrics() and "real_target_no_mask_rate" not in plain.metrics()
