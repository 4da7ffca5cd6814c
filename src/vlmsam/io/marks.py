"""Pictures of numbered candidate masks, for a VLM that chooses among them (set-of-marks) and for the
person reading its trace: each mask tinted in its palette colour, its 1-based number written where
the mask is most central, and zoomed views of one mask."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


def draw_marks(image: Image.Image, masks: np.ndarray, numbers: list[int] | None = None) -> Image.Image:
    """The image with each mask tinted and its number (1-based by default) written at the mask's most
    central pixel; ``numbers`` gives other labels (and colours) per mask."""
    numbers = list(range(1, len(masks) + 1)) if numbers is None else numbers
    rgb = np.asarray(image.convert("RGB")).astype(np.float32)
    for mask, n in zip(masks, numbers):
        rgb[mask] = 0.6 * rgb[mask] + 0.4 * np.array(PALETTE[(n - 1) % len(PALETTE)], np.float32)
    out = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for mask, n in zip(masks, numbers):
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        i = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
        draw.text((int(xs[i]) - 3, int(ys[i]) - 5), str(n), fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    return out


def zoom_view(image: Image.Image, mask: np.ndarray, number: int = 1, size: int = 256) -> Image.Image:
    """Two panels side by side, each ``size`` pixels square: the mask tinted in a crop around its box
    (the box grown by half its size on each side), and the same crop untouched with the box outlined."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    if len(xs) == 0:
        x0, y0, x1, y1 = 0, 0, w, h
    else:
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    mx, my = max(4, (x1 - x0) // 2), max(4, (y1 - y0) // 2)
    crop = (max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my))
    tinted = draw_marks(image, mask[None], [number]).crop(crop).resize((size, size))
    plain = image.convert("RGB").crop(crop)
    ImageDraw.Draw(plain).rectangle((x0 - crop[0], y0 - crop[1], x1 - crop[0] - 1, y1 - crop[1] - 1),
                                    outline=PALETTE[(number - 1) % len(PALETTE)])
    out = Image.new("RGB", (2 * size + 4, size), (255, 255, 255))
    out.paste(tinted, (0, 0))
    out.paste(plain.resize((size, size)), (size + 4, 0))
    return out
