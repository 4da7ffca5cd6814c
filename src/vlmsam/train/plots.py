"""Loss and validation curves as a PNG, drawn with Pillow (no plotting dependency)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189)]


def _panel(draw, box, title, series: dict[str, list[tuple[float, float]]]) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0 + 6, y0 - 16), title, fill=(0, 0, 0))
    points = [p for pts in series.values() for p in pts]
    if not points:
        draw.text((x0 + 10, y0 + 10), "no data", fill=(120, 120, 120))
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xmin, xmax = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    ymin, ymax = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    sx = lambda x: x0 + 8 + (x - xmin) / (xmax - xmin) * (x1 - x0 - 16)  # noqa: E731
    sy = lambda y: y1 - 8 - (y - ymin) / (ymax - ymin) * (y1 - y0 - 16)  # noqa: E731
    draw.text((x0 + 4, y1 + 2), f"step {xmin:g}", fill=(0, 0, 0))
    draw.text((x1 - 70, y1 + 2), f"step {xmax:g}", fill=(0, 0, 0))
    draw.text((x1 + 4, y0), f"{ymax:.3g}", fill=(0, 0, 0))
    draw.text((x1 + 4, y1 - 10), f"{ymin:.3g}", fill=(0, 0, 0))
    for k, (name, pts) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        coords = [(sx(x), sy(y)) for x, y in pts]
        if len(coords) > 1:
            draw.line(coords, fill=color, width=2)
        for c in coords if len(coords) < 30 else []:
            draw.ellipse((c[0] - 2, c[1] - 2, c[0] + 2, c[1] + 2), fill=color)
        draw.text((x0 + 10 + 110 * k, y0 + 6), name, fill=color)


def plot_curves(records: list[dict], out: Path) -> Path:
    """``records`` are the run's log lines (``{"step", "loss", ...}`` and ``{"step", "val_giou", ...}``)."""
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_giou" in r]
    img = Image.new("RGB", (900, 620), "white")
    draw = ImageDraw.Draw(img)
    _panel(draw, (40, 40, 820, 290), "training loss", {
        key: [(r["step"], r[key]) for r in train if key in r] for key in ("loss", "ce_loss", "bce_loss", "dice_loss", "target_loss", "grounding_loss")})
    _panel(draw, (40, 350, 820, 590), "validation (generation)", {
        key: [(r["step"], r[key]) for r in val if key in r] for key in ("val_giou", "val_ciou")})
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out


def plot_panels(records: list[dict], out: Path, panels: list[tuple[str, list[str]]]) -> Path:
    """One panel per ``(title, keys)``: each key's value over the steps of ``records`` that have it."""
    img = Image.new("RGB", (900, 40 + 310 * len(panels)), "white")
    draw = ImageDraw.Draw(img)
    for k, (title, keys) in enumerate(panels):
        y0 = 40 + 310 * k
        short = {key: key.removeprefix("rewards_").removesuffix("_mean") for key in keys}  # legends fit side by side
        _panel(draw, (40, y0, 820, y0 + 250), title,
               {short[key]: [(r["step"], r[key]) for r in records if key in r] for key in keys})
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out
