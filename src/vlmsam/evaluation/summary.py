"""``summary.png``: the best and worst requests of an evaluation as overlays, for a person to look at."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vlmsam.io.images import load_image
from vlmsam.io.writer import rle_to_mask

TILE = 256
PRED = np.array([230, 40, 40], np.float32)  # prediction: red
TARGET = np.array([40, 200, 60], np.uint8)  # ground truth: green outline


def _outline(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(bool)
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


def tile(image_path, pred: np.ndarray, target: np.ndarray, caption: str) -> Image.Image:
    img = np.asarray(load_image(image_path), dtype=np.float32)
    sel = pred.astype(bool)
    img[sel] = 0.5 * img[sel] + 0.5 * PRED
    img = img.astype(np.uint8)
    img[_outline(target == 1)] = TARGET
    pil = Image.fromarray(img)
    pil.thumbnail((TILE, TILE))
    canvas = Image.new("RGB", (TILE, TILE + 44), "white")
    canvas.paste(pil, ((TILE - pil.width) // 2, 0))
    ImageDraw.Draw(canvas).multiline_text((4, TILE + 2), "\n".join(textwrap.wrap(caption, 40)[:3]), fill=(0, 0, 0))
    return canvas


def write_summary(cases: list[dict], out: Path, k: int = 4) -> Path | None:
    """``cases``: ``{"image_path", "query", "iou", "pred_rles", "target"}``; best ``k`` on the first
    row, worst ``k`` on the second. Red = prediction, green outline = ground truth."""
    if not cases:
        return None
    ranked = sorted(cases, key=lambda c: -c["iou"])
    rows = [("best", ranked[:k]), ("worst", ranked[::-1][:k])]
    width = TILE * min(k, len(ranked))
    sheet = Image.new("RGB", (width + 60, 2 * (TILE + 44)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, row) in enumerate(rows):
        draw.text((4, r * (TILE + 44) + 4), label, fill=(0, 0, 0))
        for c, case in enumerate(row):
            target = case["target"]
            masks = [rle_to_mask(m) for m in case["pred_rles"]]
            pred = np.any(np.stack(masks), axis=0) if masks else np.zeros(target.shape, bool)
            sheet.paste(tile(case["image_path"], pred, target, f"IoU {case['iou']:.2f}: {case['query']}"),
                        (60 + c * TILE, r * (TILE + 44)))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
