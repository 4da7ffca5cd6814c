"""``summary.png``: the best and worst requests of an evaluation as overlays, for a person to look at."""

from __future__ import annotations

import io
import textwrap

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
    """The image at tile size with the prediction tinted red and the ground truth outlined in green,
    the outline drawn after the resize and two pixels wide, so both stay visible at a glance."""
    pil = load_image(image_path)
    scale = TILE / max(pil.width, pil.height)  # up or down: small images are shown at tile size too
    size = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
    pil = pil.resize(size, Image.BICUBIC)
    img = np.asarray(pil, dtype=np.float32)
    sel = np.asarray(Image.fromarray(pred.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
    img[sel] = 0.35 * img[sel] + 0.65 * PRED
    img = img.astype(np.uint8)
    small_target = np.asarray(Image.fromarray((target == 1).astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
    edge = _outline(small_target)
    thick = edge.copy()
    thick[1:, :] |= edge[:-1, :]
    thick[:, 1:] |= edge[:, :-1]
    img[thick] = TARGET
    canvas = Image.new("RGB", (TILE, TILE + 44), "white")
    canvas.paste(Image.fromarray(img), ((TILE - size[0]) // 2, 0))
    ImageDraw.Draw(canvas).multiline_text((4, TILE + 2), "\n".join(textwrap.wrap(caption, 40)[:3]), fill=(0, 0, 0))
    return canvas


def summary_png(best: list[dict], worst: list[dict]) -> bytes | None:
    """Two rows of cases (``{"image_path", "query", "iou", "pred_rles", "target"}``), as the caller chose
    them (best with a mask to look at, then the worst others; no case twice), as PNG bytes. Red =
    prediction, green outline = ground truth."""
    rows = [(label, row) for label, row in (("best", best), ("worst", worst)) if row]
    if not rows:
        return None
    width = TILE * max(len(row) for _, row in rows)
    sheet = Image.new("RGB", (width + 60, len(rows) * (TILE + 44)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, row) in enumerate(rows):
        draw.text((4, r * (TILE + 44) + 4), label, fill=(0, 0, 0))
        for c, case in enumerate(row):
            target = case["target"]
            masks = [rle_to_mask(m) for m in case["pred_rles"]]
            pred = np.any(np.stack(masks), axis=0) if masks else np.zeros(target.shape, bool)
            sheet.paste(tile(case["image_path"], pred, target, f"IoU {case['iou']:.2f}: {case['query']}"),
                        (60 + c * TILE, r * (TILE + 44)))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()
