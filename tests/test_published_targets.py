"""Ground truth built exactly as the published evaluation (LISA) builds it, on tricky annotation files.

The expected masks come from the published rule written out here with OpenCV and pycocotools
(LISA's ``get_mask_from_json`` and its refer loader); the loaders must agree pixel for pixel.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys

import cv2
import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from tests.helpers import opencv_golden
from vlmsam.data.check import run_check
from vlmsam.data.masks import coco_segmentation_to_mask
from vlmsam.data.reason_seg import ReasonSegDataset
from vlmsam.data.registry import build_eval_dataset
from vlmsam.data.sem_classes import COCO_STUFF_CLASSES, COCO_STUFF_PUBLISHED_SHA256, cocostuff_class_file
from vlmsam.evaluation.evaluate import score_predictions
from vlmsam.io.writer import mask_to_rle


# ---- the published rules, written out -----------------------------------------------------------


def published_reason_seg_mask(anno: dict, height: int, width: int) -> np.ndarray:
    """LISA utils/data_processing.py ``get_mask_from_json``, step by step."""
    areas, valid = [], []
    for shape in anno["shapes"]:
        if "flag" == shape["label"].lower():
            continue
        tmp = np.zeros((height, width), np.uint8)
        cv2.polylines(tmp, np.array([shape["points"]], dtype=np.int32), True, 1, 1)
        cv2.fillPoly(tmp, np.array([shape["points"]], dtype=np.int32), 1)
        areas.append(tmp.sum())
        valid.append(shape)
    mask = np.zeros((height, width), np.uint8)
    for k in list(np.argsort(areas)[::-1].astype(np.int32)):
        shape = valid[k]
        value = 255 if "ignore" in shape["label"].lower() else 1
        cv2.polylines(mask, np.array([shape["points"]], dtype=np.int32), True, value, 1)
        cv2.fillPoly(mask, np.array([shape["points"]], dtype=np.int32), value)
    return mask


def published_refer_mask(segmentation, height: int, width: int) -> np.ndarray:
    """LISA utils/refer_seg_dataset.py: polygons via frPyObjects, RLE lists as they are, parts summed."""
    if len(segmentation) == 0:
        return np.zeros((height, width), np.uint8)
    if isinstance(segmentation[0], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        # (the published code crashes on a single dict and on uncompressed counts; those are decoded as
        # COCO's own annToRLE decodes them)
        rle = [mask_utils.frPyObjects(r, *r["size"]) if isinstance(r["counts"], list)
               else dict(r, counts=r["counts"].encode() if isinstance(r["counts"], str) else r["counts"]) for r in segmentation]
    return np.sum(mask_utils.decode(rle), axis=2).astype(np.uint8)


def published_iou(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """LISA utils/utils.py ``intersectionAndUnionGPU`` with K=2, ignore 255, as its validate() uses it."""
    output = torch.from_numpy(pred.astype(np.int64)).clone()
    target = torch.from_numpy(target.astype(np.int64))
    output[target == 255] = 255
    intersection = output[output == target]
    area_i = torch.histc(intersection.float(), bins=2, min=0, max=1)
    area_o = torch.histc(output.float(), bins=2, min=0, max=1)
    area_t = torch.histc(target.float(), bins=2, min=0, max=1)
    union = area_o + area_t - area_i
    return float(area_i[1]), float(union[1])


# ---- fixture writers -------------------------------------------------------------------------------


def _image(path, w, h, seed, exif_orientation=None):
    arr = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    im = Image.fromarray(arr)
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        im.save(path, exif=exif.tobytes())
    else:
        im.save(path)


def write_tricky_reason_seg(root) -> dict[str, tuple[dict, int, int]]:
    """stem -> (annotation, displayed height, displayed width), one file per tricky case."""
    folder = root / "reason_seg" / "ReasonSeg" / "val"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    cases = {
        # equal areas overlapping: the earlier one is drawn last and wins (255 over 1 here)
        "ties": [{"label": "Ignore_me", "points": [[5, 5], [20, 5], [20, 20], [5, 20]]},
                 {"label": "target", "points": [[12, 12], [27, 12], [27, 27], [12, 27]]},
                 {"label": "target", "points": [[30, 2], [45, 2], [45, 17], [30, 17]]}],
        "points": [{"label": "dot", "points": [[7.6, 9.2]]}, {"label": "line", "points": [[3, 30], [40, 22.7]]}],
        "concave": [{"label": "L", "points": [[2, 2], [30, 2], [30, 8], [9, 8], [9, 35], [2, 35]]},
                    {"label": "bowtie", "points": [[20, 15], [45, 35], [45, 15], [20, 35]]}],
        "edge": [{"label": "past", "points": [[-15.5, -3], [70, 10], [55, 80], [-4, 50]]}],
        "floats": [{"label": "f", "points": [[3.99, 4.01], [25.5, 3.2], [26.7, 18.9], [4.4, 19.999]]},
                   {"label": "neg", "points": [[-0.9, 30.5], [10.2, 28.1], [8.8, 39.7]]}],
        "flags": [{"label": "FLAG", "points": [[0, 0], [47, 0], [47, 39], [0, 39]]},
                  {"label": "a flag pole", "points": [[10, 10], [14, 10], [14, 30], [10, 30]]}],
        "random": [{"label": rng.choice(["t", "ignore"]), "points": (rng.random((int(rng.integers(1, 9)), 2)) * 60 - 6).tolist()}
                   for _ in range(12)],
    }
    out = {}
    for k, (stem, shapes) in enumerate(cases.items()):
        anno = {"text": [f"the {stem}"], "is_sentence": False, "shapes": shapes}
        (folder / f"{stem}.json").write_text(json.dumps(anno))
        _image(folder / f"{stem}.jpg", 48, 40, k)
        out[stem] = (anno, 40, 48)
    # A JPEG whose header says 48x40 but whose EXIF turns it upright to 40x48.
    anno = {"text": ["the tall box"], "is_sentence": False, "shapes": [{"label": "box", "points": [[3, 30], [30, 30], [30, 45], [3, 45]]}]}
    (folder / "exif.json").write_text(json.dumps(anno))
    _image(folder / "exif.jpg", 48, 40, 9, exif_orientation=6)
    out["exif"] = (anno, 48, 40)
    # Not UTF-8: the published loader falls back to cp1252.
    anno = {"text": ["the \u201cred\u201d caf\u00e9 sign"], "is_sentence": False, "shapes": [{"label": "sign", "points": [[1, 1], [9, 1], [9, 9]]}]}
    (folder / "cp1252.json").write_bytes(json.dumps(anno, ensure_ascii=False).encode("cp1252"))
    _image(folder / "cp1252.jpg", 48, 40, 10)
    out["cp1252"] = (anno, 40, 48)
    return out


def write_tricky_refer(root):
    """refcoco val: overlapping polygons, a list of RLE dicts (overlapping), one uncompressed RLE, an empty one."""
    h, w = 30, 40
    base = root / "refer_seg"
    img_dir = base / "images" / "mscoco" / "images" / "train2014"
    img_dir.mkdir(parents=True)
    _image(img_dir / "a.jpg", w, h, 0)
    part1, part2 = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    part1[2:15, 3:20] = 1
    part2[10:25, 15:35] = 1
    rle_list = []
    for part in (part1, part2):
        r = mask_utils.encode(np.asfortranarray(part))
        rle_list.append({"size": r["size"], "counts": r["counts"].decode()})
    uncompressed = {"size": [h, w], "counts": [60, 30, 1110]}  # column-major runs
    segs = {1: [[2, 2, 20, 2, 20, 12, 2, 12], [10, 8, 30, 8, 30, 20, 10, 20]], 2: rle_list, 3: uncompressed, 4: []}
    anns = [{"id": k, "image_id": 1, "category_id": 1, "segmentation": s} for k, s in segs.items()]
    refs = [{"ref_id": 100 + k, "ann_id": k, "image_id": 1, "split": "val", "sentences": [{"sent": f"object {k}"}]}
            for k in segs]
    (base / "refcoco").mkdir(parents=True)
    (base / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (base / "refcoco" / "instances.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "a.jpg", "height": h, "width": w}], "annotations": anns, "categories": []}))
    return segs, h, w


# ---- tests ---------------------------------------------------------------------------------------------


def test_pinned_opencv_draws_the_pixels_of_lisas_release():
    got = opencv_golden.digest(opencv_golden.draw(p) for p in opencv_golden.polygons())
    assert got == opencv_golden.OPENCV_4_8_0_74_SHA256, f"OpenCV {cv2.__version__} draws polygons differently from 4.8.0.74"


def test_reason_seg_targets_equal_the_published_construction(tmp_path):
    cases = write_tricky_reason_seg(tmp_path)
    ds = ReasonSegDataset(tmp_path, "val")
    stems = [p.stem for p in ds.items]
    assert sorted(stems) == sorted(cases)
    for i, stem in enumerate(stems):
        anno, h, w = cases[stem]
        sample = ds.load_eval(i)
        expected = published_reason_seg_mask(anno, h, w)
        assert sample.masks.shape == (1, h, w), stem
        np.testing.assert_array_equal(sample.masks[0], expected, err_msg=stem)
    by_stem = {s: ds.load_eval(i) for i, s in enumerate(stems)}
    ties = by_stem["ties"].masks[0]
    assert ties[15, 15] == 255  # the earlier of two equal areas wins the overlap
    assert by_stem["points"].masks[0][9, 7] == 1  # a one-point shape is a dot
    assert by_stem["flags"].masks[0].sum() > 0 and by_stem["flags"].masks[0][0, 0] == 0  # "FLAG" skipped, "a flag pole" kept
    assert by_stem["cp1252"].meta["queries"] == ["the \u201cred\u201d caf\u00e9 sign"]


def test_exif_rotated_jpeg_gives_an_upright_target_and_loads(tmp_path):
    from vlmsam.io.images import load_image  # what the collator and every segmenter read

    cases = write_tricky_reason_seg(tmp_path)
    ds = ReasonSegDataset(tmp_path, "val")
    i = [p.stem for p in ds.items].index("exif")
    sample = ds.load_eval(i)
    assert sample.masks.shape == (1, 48, 40)
    image = load_image(sample.image)
    assert image.size == (40, 48)
    assert cases["exif"][1:] == (48, 40)


def test_refer_targets_sum_parts_for_evaluation_and_or_them_for_training(tmp_path):
    segs, h, w = write_tricky_refer(tmp_path)
    ds = build_eval_dataset("refcoco|unc|val", tmp_path)
    sample = ds.load_eval(0)
    assert sample.meta["queries"] == [f"object {k}" for k in segs]
    for k, mask in zip(segs, sample.masks):
        np.testing.assert_array_equal(mask, published_refer_mask(segs[k] if isinstance(segs[k], list) else [segs[k]], h, w)
                                      if segs[k] != [] else np.zeros((h, w), np.uint8), err_msg=f"ann {k}")
    assert sample.masks[0].max() == 2 and sample.masks[1].max() == 2  # overlaps of parts, as published
    union = build_eval_dataset("refcoco|unc|val", tmp_path, multi_part="or").load_eval(0)
    np.testing.assert_array_equal(union.masks[:2], np.minimum(sample.masks[:2], 1))
    for k, seg in segs.items():
        assert coco_segmentation_to_mask(seg, h, w).max() <= 1  # training ORs


def test_data_check_passes_on_every_tricky_case_and_notes_the_empty_segmentation(tmp_path):
    write_tricky_reason_seg(tmp_path)
    write_tricky_refer(tmp_path)
    lines = []
    assert run_check(tmp_path, ["reason_seg", "refer_seg"], {"refer_seg": "refcoco"}, progress=False, print_fn=lines.append)
    text = "\n".join(lines)
    assert "annotation 4: empty segmentation" in text
    assert "reason_seg:val" in text and "refcoco:val" in text


def test_score_equals_the_published_metric_on_the_published_targets(tmp_path):
    cases = write_tricky_reason_seg(tmp_path)
    ds = ReasonSegDataset(tmp_path, "val")
    rng = np.random.default_rng(0)
    lines, pairs = [], []
    for i, path in enumerate(ds.items):
        anno, h, w = cases[path.stem]
        pred = rng.random((h, w)) < 0.3
        pred[: h // 2] |= published_reason_seg_mask(anno, h, w)[: h // 2] == 1
        lines.append({"image": path.stem, "query": anno["text"][0], "answer": "", "masks": [mask_to_rle(pred)]})
        pairs.append(published_iou(pred, published_reason_seg_mask(anno, h, w)))
    pred_file = tmp_path / "predictions.jsonl"
    pred_file.write_text("".join(json.dumps(x) + "\n" for x in lines))
    metrics = score_predictions(pred_file, ds, progress=False)
    # LISA's validate(): per-pair IoU = I / (U + 1e-5), +1.0 where U == 0; cIoU = sum I / (sum U + 1e-10)
    giou = np.mean([i / (u + 1e-5) + (1.0 if u == 0 else 0.0) for i, u in pairs])
    ciou = sum(i for i, _ in pairs) / (sum(u for _, u in pairs) + 1e-10)
    assert metrics["missing"] == 0
    assert abs(metrics["giou"] - giou) < 1e-6 and abs(metrics["ciou"] - ciou) < 1e-6


def test_refer_score_equals_the_published_metric_with_summed_parts(tmp_path):
    segs, h, w = write_tricky_refer(tmp_path)
    ds = build_eval_dataset("refcoco|unc|val", tmp_path)
    target = ds.load_eval(0).masks
    pred = np.zeros((h, w), bool)
    pred[0:20, 0:30] = True  # covers the overlap of ann 1's parts, which the published target marks 2
    lines = [{"image": "a", "query": f"object {k}", "answer": "", "masks": [mask_to_rle(pred)]} for k in segs]
    pred_file = tmp_path / "p.jsonl"
    pred_file.write_text("".join(json.dumps(x) + "\n" for x in lines))
    metrics = score_predictions(pred_file, ds, progress=False)
    pairs = [published_iou(pred, t) for t in target]
    giou = np.mean([i / (u + 1e-5) + (1.0 if u == 0 else 0.0) for i, u in pairs])
    assert abs(metrics["giou"] - giou) < 1e-6


def test_cocostuff_class_list_is_the_published_file():
    assert len(COCO_STUFF_CLASSES) == 182 and COCO_STUFF_CLASSES[156] == "sky"
    text = cocostuff_class_file(COCO_STUFF_CLASSES)
    assert hashlib.sha256(text.encode()).hexdigest() == COCO_STUFF_PUBLISHED_SHA256


def test_cocostuff_asks_sky_and_notes_a_user_list_that_differs(tmp_path):
    from vlmsam.data.sem_seg import CocoStuffDataset

    (tmp_path / "coco" / "train2017").mkdir(parents=True)
    (tmp_path / "cocostuff" / "train2017").mkdir(parents=True)
    _image(tmp_path / "coco" / "train2017" / "1.jpg", 8, 8, 0)
    label = np.full((8, 8), 156, np.uint8)
    label[:2] = 95  # building-other: vague, skipped
    Image.fromarray(label).save(tmp_path / "cocostuff" / "train2017" / "1.png")
    import random

    sample = CocoStuffDataset(tmp_path).load(0, random.Random(0))
    assert sample.meta["classes"] == ["sky"]
    official = cocostuff_class_file(COCO_STUFF_CLASSES).replace("157: sky\n", "157: sky-other\n")
    (tmp_path / "cocostuff" / "classes.txt").write_text(official)
    ds = CocoStuffDataset(tmp_path)
    assert any("156: 'sky-other'" in note for note in ds.notes.values())


def test_pil_fill_differs_from_the_published_outline():
    """Why OpenCV: PIL's polygon fill leaves thinner outlines than the published drawing."""
    from PIL import ImageDraw

    differ = 0
    for points in opencv_golden.polygons(60, seed=1):
        if len(points) < 3:
            continue
        canvas = Image.new("L", (opencv_golden.W, opencv_golden.H), 0)
        ImageDraw.Draw(canvas).polygon([(int(x), int(y)) for x, y in points], fill=1, outline=1)
        differ += int((np.asarray(canvas) != opencv_golden.draw(points)).any())
    assert differ > 0


def test_golden_script_runs_standalone():
    out = subprocess.run([sys.executable, "tests/helpers/opencv_golden.py"], capture_output=True, text=True, check=True)
    assert opencv_golden.OPENCV_4_8_0_74_SHA256 in out.stdout
