"""Writers of tiny but faithful dataset trees, one per on-disk format the loaders read.

Each writer returns the masks it drew itself (with numpy slicing, not with the loaders' code), so
tests can check the loaders pixel by pixel. Rectangles keep the expected pixels unambiguous:
LabelMe polygons include their outline (cv2.fillPoly semantics), COCO polygons cover
``[x0, x1) x [y0, y1)`` (pycocotools' rasterisation).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


def _image(path: Path, h: int, w: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)


def _rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def _box(h, w, x0, y0, x1, y1, value=1, inclusive=True):
    m = np.zeros((h, w), np.uint8)
    m[y0 : y1 + inclusive, x0 : x1 + inclusive] = value
    return m


def write_reason_seg(root: Path) -> dict[str, np.ndarray]:
    """train: a big box under a smaller one inside it (largest first), an ignore box, a flag shape;
    an image with no shapes (empty target). val: one image, one box. Returns stem -> expected mask."""
    base = root / "reason_seg" / "ReasonSeg"
    expected = {}
    h, w = 40, 50
    _image(base / "train" / "kitchen.jpg", h, w, 1)
    shapes = [
        {"label": "target", "points": _rect(20, 10, 30, 20)},  # small, listed first
        {"label": "target", "points": _rect(5, 5, 40, 30)},  # large: must not cover the small one
        {"label": "ignore", "points": _rect(42, 32, 48, 38)},
        {"label": "flag", "points": _rect(0, 0, 49, 39)},  # deprecated: skipped
    ]
    (base / "train" / "kitchen.json").write_text(json.dumps(
        {"text": ["the knife", "what cuts bread"], "is_sentence": False, "shapes": shapes}))
    m = _box(h, w, 5, 5, 40, 30)
    m[32:39, 42:49] = 255
    expected["kitchen"] = m
    # An ignore region *inside* the target, drawn later because it is smaller.
    _image(base / "train" / "desk.png", h, w, 2)
    (base / "train" / "desk.json").write_text(json.dumps({
        "text": ["Which object would you use to write a letter?"], "is_sentence": True,
        "shapes": [{"label": "ignore_pen_tip", "points": _rect(12, 12, 14, 14)}, {"label": "pen", "points": _rect(10, 10, 30, 15)}]}))
    m = _box(h, w, 10, 10, 30, 15)
    m[12:15, 12:15] = 255
    expected["desk"] = m
    _image(base / "train" / "empty.jpg", h, w, 3)
    (base / "train" / "empty.json").write_text(json.dumps({"text": ["the unicorn"], "is_sentence": False, "shapes": []}))
    expected["empty"] = np.zeros((h, w), np.uint8)
    _image(base / "val" / "street.jpg", h, w, 4)
    (base / "val" / "street.json").write_text(json.dumps(
        {"text": ["What would stop traffic?", "a second text"], "is_sentence": True, "shapes": [{"label": "sign", "points": _rect(1, 2, 8, 9)}]}))
    expected["street"] = _box(h, w, 1, 2, 8, 9)
    (base / "explanatory").mkdir(parents=True, exist_ok=True)
    (base / "explanatory" / "train.json").write_text(json.dumps(
        [{"image": "kitchen.jpg", "query": "what cuts bread", "outputs": "A knife has a sharp blade."}]))
    return expected


def write_refer(root: Path, name: str = "refcoco", split_by: str = "unc") -> dict[int, np.ndarray]:
    """Two COCO images; a polygon ref (two polygons of one object), an RLE ref, a ref in val.
    Returns ref_id -> expected mask."""
    base = root / "refer_seg"
    img_dir = base / "images" / ("saiapr_tc-12" if name == "refclef" else "mscoco/images/train2014")
    h, w = 30, 40
    images = [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": h, "width": w},
              {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": h, "width": w}]
    for k, img in enumerate(images):
        _image(img_dir / img["file_name"], h, w, 10 + k)
    rle_mask = _box(h, w, 3, 4, 12, 20, inclusive=False)
    rle = mask_utils.encode(np.asfortranarray(rle_mask))
    rle["counts"] = rle["counts"].decode()
    annotations = [
        {"id": 11, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 10, 2, 10, 8, 2, 8], [6, 6, 20, 6, 20, 12, 6, 12]]},
        {"id": 12, "image_id": 1, "category_id": 1, "segmentation": rle},
        {"id": 21, "image_id": 2, "category_id": 1, "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]]},
    ]
    refs = [
        {"ref_id": 100, "ann_id": 11, "image_id": 1, "split": "train", "sentences": [{"sent": "left man"}, {"sent": "guy on the left"}]},
        {"ref_id": 101, "ann_id": 12, "image_id": 1, "split": "train", "sentences": [{"sent": "red car"}]},
        {"ref_id": 102, "ann_id": 21, "image_id": 2, "split": "val", "sentences": [{"sent": "small box"}, {"sent": "top left box"}]},
    ]
    (base / name).mkdir(parents=True, exist_ok=True)
    (base / name / f"refs({split_by}).p").write_bytes(pickle.dumps(refs, protocol=2))
    (base / name / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}))
    union = np.maximum(_box(h, w, 2, 2, 10, 8, inclusive=False), _box(h, w, 6, 6, 20, 12, inclusive=False))
    return {100: union, 101: rle_mask, 102: _box(h, w, 0, 0, 5, 5, inclusive=False)}


def write_ade20k(root: Path) -> np.ndarray:
    """One image; label 0 (other) on the left, class 1 (wall) and class 5 (tree) boxes."""
    base = root / "ade20k"
    h, w = 24, 32
    _image(base / "images" / "training" / "ADE_train_00000001.jpg", h, w, 20)
    label = np.zeros((h, w), np.uint8)
    label[:, 8:] = 1
    label[4:10, 12:20] = 5
    (base / "annotations" / "training").mkdir(parents=True, exist_ok=True)
    Image.fromarray(label).save(base / "annotations" / "training" / "ADE_train_00000001.png")
    return label


def write_cocostuff(root: Path) -> np.ndarray:
    """person (0), building-other (95, vague: ignored) and 255 unlabelled."""
    h, w = 20, 20
    _image(root / "coco" / "train2017" / "000000000009.jpg", h, w, 30)
    label = np.full((h, w), 255, np.uint8)
    label[2:10, 2:10] = 0
    label[12:18, :] = 95
    label[0:2, :] = 1  # bicycle
    (root / "cocostuff" / "train2017").mkdir(parents=True, exist_ok=True)
    Image.fromarray(label).save(root / "cocostuff" / "train2017" / "000000000009.png")
    return label


def write_mapillary(root: Path) -> np.ndarray:
    base = root / "mapillary"
    base.mkdir(parents=True, exist_ok=True)
    labels = [{"readable": "Bird", "name": "animal--bird"}, {"readable": "Road", "name": "construction--flat--road"},
              {"readable": "Unlabeled", "name": "void--unlabeled"}]
    (base / "config_v2.0.json").write_text(json.dumps({"labels": labels}))
    h, w = 16, 24
    _image(base / "training" / "images" / "abc.jpg", h, w, 40)
    label = np.full((h, w), 2, np.uint8)
    label[8:, :] = 1
    (base / "training" / "v2.0" / "labels").mkdir(parents=True, exist_ok=True)
    Image.fromarray(label).save(base / "training" / "v2.0" / "labels" / "abc.png")
    return label


def write_coco_parts(root: Path, kind: str) -> dict[str, np.ndarray]:
    """PACO-LVIS or PASCAL-Part: two instances of one object category (their union is the target)
    and a part category. Returns category name -> expected mask."""
    h, w = 20, 30
    if kind == "paco_lvis":
        json_path = root / "vlpart" / "paco" / "annotations" / "paco_lvis_v1_train.json"
        file_name, image_path = "train2017/000000000042.jpg", root / "coco" / "train2017" / "000000000042.jpg"
        cats = [{"id": 1, "name": "mug"}, {"id": 2, "name": "mug:handle"}]
    else:
        json_path = root / "vlpart" / "pascal_part" / "train.json"
        file_name = "2008_000002.jpg"
        image_path = root / "vlpart" / "pascal_part" / "VOCdevkit" / "VOC2010" / "JPEGImages" / file_name
        cats = [{"id": 1, "name": "dog:body"}, {"id": 2, "name": "dog:leg"}]
    _image(image_path, h, w, 50)
    anns = [
        {"id": 1, "image_id": 7, "category_id": 1, "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]},
        {"id": 2, "image_id": 7, "category_id": 1, "segmentation": [[20, 10, 28, 10, 28, 18, 20, 18]]},
        {"id": 3, "image_id": 7, "category_id": 2, "segmentation": [[10, 2, 14, 2, 14, 9, 10, 9]]},
    ]
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"images": [{"id": 7, "file_name": file_name, "height": h, "width": w}],
                                     "annotations": anns, "categories": cats}))
    first = np.maximum(_box(h, w, 1, 1, 6, 6, inclusive=False), _box(h, w, 20, 10, 28, 18, inclusive=False))
    return {cats[0]["name"]: first, cats[1]["name"]: _box(h, w, 10, 2, 14, 9, inclusive=False)}


def write_vqa(root: Path) -> None:
    _image(root / "coco" / "train2017" / "000000000077.jpg", 20, 20, 60)
    entries = [
        {"id": "a", "image": "000000000077.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": "Noise."},
            {"from": "human", "value": "Which colours?"}, {"from": "gpt", "value": "All of them."}]},
        {"id": "b", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},  # text only
    ]
    (root / "llava_dataset").mkdir(parents=True, exist_ok=True)
    (root / "llava_dataset" / "llava_instruct_150k.json").write_text(json.dumps(entries))


def write_seg_pp(root: Path) -> dict[str, np.ndarray]:
    """caption (a bracketed group of two RLE-marked objects) and instance_seg (polygons).
    Returns instance id -> expected mask."""
    from datasets import Dataset

    h, w = 20, 30
    _image(root / "coco" / "train2017" / "000000000100.jpg", h, w, 70)
    m1 = _box(h, w, 2, 2, 10, 10, inclusive=False)
    m2 = _box(h, w, 12, 3, 25, 15, inclusive=False)
    rles = {}
    for k, m in (("1", m1), ("2", m2)):
        r = mask_utils.encode(np.asfortranarray(m))
        rles[k] = {"size": list(r["size"]), "counts": r["counts"].decode()}
    caption = [{"image_path": "000000000100.jpg", "English Question": "Describe the image.",
                "English Answer": "Two things: [《1|cup》 《2|plate》] on a table.", "is_rle": True, "info": json.dumps(rles)}]
    instance = [{"image_path": "000000000100.jpg", "English Question": "",
                 "English Answer": "instance id is 1, label name is cup; instance id is 2, label name is plate",
                 "is_rle": False, "info": json.dumps({"1": [[[2, 2], [9, 2], [9, 9], [2, 9]]], "2": [[12, 3], [24, 3], [24, 14], [12, 14]]})}]
    out = root / "seg++"
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("caption", caption), ("instance_seg", instance)):
        tmp = root / f"_hf_{name}"
        Dataset.from_list(rows).save_to_disk(str(tmp))
        (tmp / "data-00000-of-00001.arrow").rename(out / f"{name}.arrow")
    return {"1": m1, "2": m2, "1_poly": _box(h, w, 2, 2, 9, 9), "2_poly": _box(h, w, 12, 3, 24, 14)}


def write_all(root: Path) -> dict:
    return {
        "reason_seg": write_reason_seg(root),
        "refcoco": write_refer(root, "refcoco", "unc"),
        "refcocog": write_refer(root, "refcocog", "umd"),
        "ade20k": write_ade20k(root),
        "cocostuff": write_cocostuff(root),
        "mapillary": write_mapillary(root),
        "paco_lvis": write_coco_parts(root, "paco_lvis"),
        "pascal_part": write_coco_parts(root, "pascal_part"),
        "vqa": write_vqa(root),
        "seg_pp": write_seg_pp(root),
    }
