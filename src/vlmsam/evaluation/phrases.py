"""Phrase segmentation scored per instance: what SAM 3 (``grounded`` on SAM 3) is for.

On synthetic scenes (``vlmsam data synth``), every scene's phrases come from its annotation
(:func:`vlmsam.data.phrases.phrases_for`: the same phrases every run); a phrase's truth is every shape it
names, as visible in the picture. COCO-format instance annotations give one phrase per category. Predicted and true instances are matched one to one (Hungarian on mask
IoU); figures:

* ``instance_recall``: true instances matched at mask IoU >= 0.5;
* ``matched_iou``: mean mask IoU of those matches;
* ``instance_precision``: predicted instances that are such a match;
* ``no_target_empty``: phrases naming nothing answered with no instance (SAM 3's presence head);
* ``mask_ap`` / ``mask_ap50``: COCO mask AP over (scene, phrase) pairs, through pycocotools.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from vlmsam.data.phrases import phrases_for
from vlmsam.data.synth import scene_files, visible_masks
from vlmsam.errors import DatasetError
from vlmsam.io.files import read_json
from vlmsam.io.writer import mask_to_rle

MATCH_IOU = 0.5


def mask_ious(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """``(P, T)`` IoU of boolean masks ``pred (P, H, W)`` and ``true (T, H, W)``."""
    if not len(pred) or not len(true):
        return np.zeros((len(pred), len(true)))
    p, t = pred.reshape(len(pred), -1).astype(np.float32), true.reshape(len(true), -1).astype(np.float32)
    inter = p @ t.T
    union = p.sum(1)[:, None] + t.sum(1)[None] - inter
    return inter / np.maximum(union, 1)


def match_instances(pred: np.ndarray, true: np.ndarray) -> list[float]:
    """IoUs of the one-to-one matches (Hungarian on IoU) that reach :data:`MATCH_IOU`."""
    from scipy.optimize import linear_sum_assignment

    ious = mask_ious(pred, true)
    if not ious.size:
        return []
    rows, cols = linear_sum_assignment(-ious)
    return [float(ious[r, c]) for r, c in zip(rows, cols) if ious[r, c] >= MATCH_IOU]


def _coco_ap(gts: list[dict], dts: list[dict], sizes: list[tuple[int, int]]) -> tuple[float, float]:
    import contextlib

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not gts:
        return float("nan"), float("nan")
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "height": h, "width": w} for i, (h, w) in enumerate(sizes)], "categories": [{"id": 1}],
                    "annotations": [{**g, "id": k + 1, "category_id": 1, "iscrowd": 0} for k, g in enumerate(gts)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        found = coco.loadRes([{**d, "category_id": 1} for d in dts]) if dts else None
        if found is None:
            return 0.0, 0.0
        ev = COCOeval(coco, found, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def synthetic_cases(data_dir: str | Path, split: str = "test", limit: int = 0):
    """``(image path, [(phrase, (n, H, W) bool truth)])`` per synthetic scene; the same phrases every run."""
    for path in scene_files(data_dir, split)[: limit or None]:
        anno = read_json(path, "a synthetic scene", dict)
        h, w = int(anno["imageHeight"]), int(anno["imageWidth"])
        visible = visible_masks(anno["scene"], h, w)
        yield path.with_suffix(".jpg"), [(p.text, visible[list(p.instances)]) for p in phrases_for(path.stem, anno["scene"])]


def coco_cases(data_dir: str | Path, spec: str, limit: int = 0):
    """The same from COCO-format instance annotations (``ANNOTATIONS.json|IMAGE_DIR``): each category present
    names all its instances; two absent categories (drawn with a fixed seed) name nothing."""
    import random

    from vlmsam.data.coco_instances import CocoInstancesDataset

    ds = CocoInstancesDataset(data_dir, spec)
    for i in range(len(ds) if not limit else min(limit, len(ds))):
        yield ds.image_path(i), ds.phrase_targets(i, random.Random(i))


def evaluate_phrases(sam3, cases, *, threshold: float = 0.5, progress: bool = True) -> tuple[dict, list[dict]]:
    """Figures of a :class:`~vlmsam.sam.sam3_backend.Sam3Backend` on ``cases`` (:func:`synthetic_cases`,
    :func:`coco_cases`), and the per-phrase records (for pictures)."""
    from tqdm import tqdm

    matched, n_true, n_pred, empty, n_negative, n_images = [], 0, 0, 0, 0, 0
    gts, dts, records = [], [], []
    for image_path, pairs in tqdm(cases, desc="phrases", unit="image", disable=not progress):
        n_images += 1
        found = sam3.segment_phrases(sam3.encode(image_path), [text for text, _ in pairs], threshold=threshold)
        for (text, true), got in zip(pairs, found):
            h, w = got.masks.shape[1:]
            true = np.asarray(true, bool)
            if true.ndim != 3 or (len(true) and true.shape[1:] != (h, w)):
                raise DatasetError(f"{image_path}: the annotation's masks are {true.shape[-1]}x{true.shape[-2]} but the image is "
                                   f"{w}x{h}; fix the annotation's image size")
            true = true.reshape(-1, h, w)
            true = true[true.reshape(len(true), h * w).any(1)]
            image_id = len(records)
            hits = match_instances(got.masks, true)
            records.append({"image_path": image_path, "query": text, "pred": got.masks, "true": true,
                            "recall": len(hits) / len(true) if len(true) else float(len(got) == 0)})
            if not len(true):
                n_negative += 1
                empty += len(got) == 0
            matched += hits
            n_true, n_pred = n_true + len(true), n_pred + len(got)
            gts += [{"image_id": image_id, "segmentation": mask_to_rle(m), "area": float(m.sum()), "bbox": _bbox(m)} for m in true]
            dts += [{"image_id": image_id, "segmentation": mask_to_rle(m), "score": float(s)} for m, s in zip(got.masks, got.scores)]
    ap, ap50 = _coco_ap(gts, dts, [r["pred"].shape[1:] for r in records])
    metrics = {"images": n_images, "phrases": len(records), "instances": n_true, "no_target_phrases": n_negative,
               "instance_recall": round(len(matched) / max(1, n_true), 4),
               "matched_iou": round(float(np.mean(matched)) if matched else 0.0, 4),
               "instance_precision": round(len(matched) / max(1, n_pred), 4),
               "no_target_empty": round(empty / max(1, n_negative), 4),
               "mask_ap": None if ap != ap else round(ap, 4), "mask_ap50": None if ap50 != ap50 else round(ap50, 4),  # no truth: no AP
               "threshold": threshold}
    return metrics, records


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def phrases_png(records: list[dict], n: int = 8) -> bytes | None:
    """The best and the worst phrases (by recall) as overlays: red = predicted instances, green = truth."""
    from PIL import Image

    from vlmsam.evaluation.summary import TILE, tile

    if not records:
        return None
    ranked = sorted(records, key=lambda r: r["recall"])
    rows = [ranked[::-1][:n], ranked[:n]]
    sheet = Image.new("RGB", (TILE * n, 2 * (TILE + 44)), "white")
    for r, row in enumerate(rows):
        for c, rec in enumerate(row):
            shape = rec["true"].shape[1:] if len(rec["true"]) else rec["pred"].shape[1:]
            pred = rec["pred"].any(0) if len(rec["pred"]) else np.zeros(shape, bool)
            true = rec["true"].any(0).astype(np.uint8) if len(rec["true"]) else np.zeros(shape, np.uint8)
            caption = f"recall {rec['recall']:.2f} ({len(rec['pred'])} found / {len(rec['true'])} true): {rec['query']}"
            sheet.paste(tile(rec["image_path"], pred, true, caption), (c * TILE, r * (TILE + 44)))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()
