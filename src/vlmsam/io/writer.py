"""One writer for every result a person looks at, in the file names the seed systems use.

For an image ``stem`` and a result with N masks, :func:`write_result` writes to ``out_dir``:

- ``{stem}_mask_{i}.png``: mask ``i`` as a 0/255 grayscale PNG;
- ``{stem}_masked_img_{i}.jpg``: the image with mask ``i`` tinted (0.5 x image + 0.5 x red), as LISA writes it;
- ``{stem}_overlay.jpg``: every mask at once, each in its own colour;
- ``{stem}.json``: the answer text, boxes, scores, labels, timings and the masks as COCO RLE.

The files of one result are written as a set (:mod:`vlmsam.io.result_set`): each to a temporary
name beside its target, then all renamed into place, the json last, so a reader never sees half a
file, a full disk leaves no mask without its json, and no file that vlmsam did not write is ever
replaced or deleted (the directory's manifest, ``.vlmsam-written.json``, lists what it wrote).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from vlmsam.result import SegmentationResult

# Distinct, colour-blind-friendly colours (Okabe-Ito, then a few more) for the all-masks overlay.
PALETTE = np.array(
    [
        (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
        (213, 94, 0), (204, 121, 167), (255, 0, 0), (0, 255, 255), (128, 0, 255),
    ],
    dtype=np.float32,
)
RED = np.array((255, 0, 0), dtype=np.float32)

TRACE_SUMMARY = ("reason", "turns", "phrases", "malformed_calls")  # why an agent stopped, beside its steps


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        from vlmsam.errors import VlmsamError

        raise VlmsamError(f"{path}: is a directory; cannot write a file there")
    tmp = write_temp(path.parent, data, prefix=f".{path.name}.")
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_temp(directory: str | os.PathLike, data: bytes, prefix: str) -> str:
    """``data`` in a new temporary file in ``directory`` (flushed to disk, the user's usual mode); its path.
    Nothing is left behind when the write fails."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600; the result gets the user's usual mode
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def current_umask() -> int:
    current = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(current)
    return current


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """Refuse an ``--out`` that cannot become a directory (a file, or under one) before any work starts;
    nothing is created."""
    from vlmsam.errors import VlmsamError

    out = Path(out_dir)
    for p in (out, *out.parents):
        if os.path.exists(p):  # False, not an error, for a name too long to exist
            if not os.path.isdir(p):
                raise VlmsamError(f"{p}: is a file; --out names a directory")
            break
    return out


def prepare_out_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a directory (made if missing); a file there is a one-line user error."""
    from vlmsam.errors import VlmsamError

    out = Path(out_dir)
    if os.path.exists(out) and not os.path.isdir(out):
        raise VlmsamError(f"{out}: is a file; --out names a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VlmsamError(f"{out}: cannot create the output directory ({exc.strerror})") from None
    return out


def _encode_image(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO RLE of an ``(H, W) bool`` mask, with ``counts`` as a JSON-safe string."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_counts(counts) -> list[int]:
    """The run lengths of COCO RLE ``counts`` (compressed string or list), without decoding a mask
    (pycocotools' string format: 5-bit groups, the high bit says "more", runs after the second are
    stored as differences)."""
    if isinstance(counts, list):
        return [int(c) for c in counts]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if not isinstance(counts, str):
        raise ValueError("RLE counts must be a string or a list")
    out: list[int] = []
    p = 0
    while p < len(counts):
        x = k = 0
        more = True
        while more:
            if p >= len(counts):
                raise ValueError("RLE counts string ends inside a number")
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def check_rle(rle, shape: tuple[int, int]) -> None:
    """Raise ValueError unless ``rle`` is a COCO RLE of exactly ``shape = (H, W)`` whose runs cover it,
    before anything is decoded (a 100-byte line can claim a 30000 x 30000 mask)."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("not a COCO RLE (needs 'size' and 'counts')")
    size = rle["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        raise ValueError(f"RLE size {size!r} is not [height, width]")
    if tuple(size) != tuple(shape):
        raise ValueError(f"RLE of size {size[1]}x{size[0]} for an image of {shape[1]}x{shape[0]}")
    runs = rle_counts(rle["counts"])
    negative = next((k for k, r in enumerate(runs) if r < 0), None)
    if negative is not None:
        raise ValueError(f"RLE run {negative} is negative ({runs[negative]:,}); the counts are corrupt")
    if sum(runs) != shape[0] * shape[1]:
        raise ValueError(f"RLE runs add up to {sum(runs):,} pixels, not {shape[0] * shape[1]:,}")


def rle_to_mask(rle: dict) -> np.ndarray:
    """Inverse of :func:`mask_to_rle`: an ``(H, W) bool`` mask."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    encoded = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    if isinstance(counts, list):  # uncompressed RLE, as COCO annotations sometimes hold
        encoded = mask_utils.frPyObjects(encoded, *rle["size"])
    return mask_utils.decode(encoded).astype(bool)


def tint(image: np.ndarray, mask: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` with ``(1 - alpha) * image + alpha * color`` where ``mask`` is set (float32 out)."""
    out = image.astype(np.float32, copy=True)
    out[mask] = (1.0 - alpha) * out[mask] + alpha * color
    return out


def overlay_all(image: np.ndarray, masks: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Every mask tinted in its own colour (``(H, W, 3) uint8``); later masks are drawn on top."""
    out = image.astype(np.float32, copy=True)
    for i, mask in enumerate(masks):
        out = tint(out, mask, PALETTE[i % len(PALETTE)], alpha)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def write_result(
    result: SegmentationResult,
    image: Image.Image,
    out_dir: str | os.PathLike,
    stem: str,
    *,
    extra: dict | None = None,
    files: dict[str, bytes] | None = None,
) -> dict[str, list[Path] | Path]:
    """Write ``result`` for ``image`` (the RGB image the masks refer to) under ``out_dir``, as one set
    (:func:`vlmsam.io.result_set.write_set`: all or nothing, the json last, no file replaced that
    vlmsam did not write). ``files``: more ``{name: bytes}`` of this result, written in the same set.

    Returns the written paths: ``{"masks": [...], "masked_images": [...], "overlay": P, "json": P}``.
    """
    from vlmsam.io.result_set import write_set

    out = Path(out_dir)
    rgb = np.asarray(image.convert("RGB"))
    if rgb.shape[:2] != result.image_size and result.num_masks:
        raise ValueError(f"masks are {result.image_size} but the image is {rgb.shape[:2]} (H, W)")
    outputs: list[tuple[str, object]] = []
    for i, mask in enumerate(result.masks):
        outputs.append((f"{stem}_mask_{i}.png", lambda m=mask: _encode_image(Image.fromarray(m.astype(np.uint8) * 255), "PNG")))
        outputs.append((f"{stem}_masked_img_{i}.jpg", lambda m=mask: _encode_image(
            Image.fromarray(np.clip(tint(rgb, m, RED) + 0.5, 0, 255).astype(np.uint8)), "JPEG")))
    outputs.append((f"{stem}_overlay.jpg", lambda: _encode_image(Image.fromarray(overlay_all(rgb, result.masks)), "JPEG")))
    for name, picture in result.extra_images.items():
        outputs.append((f"{stem}_{name}.png", lambda p=picture: _encode_image(p, "PNG")))
    outputs.extend((files or {}).items())
    if "trace" in result.info:  # an agent's steps: a file of their own, each step's picture beside it
        outputs.append((f"{stem}_trace.json", lambda: json.dumps(
            {"image": stem, "answer": result.text, **{k: result.info[k] for k in TRACE_SUMMARY if k in result.info},
             "steps": result.info["trace"],
             "pictures": {n: f"{stem}_{n}.png" for n in result.extra_images}}, indent=2).encode("utf-8")))
    outputs.append((f"{stem}.json", lambda: json.dumps(_record(result, rgb, stem, extra), indent=2).encode("utf-8")))
    write_set(out, outputs, stale=_stale(stem, result.num_masks, {name for name, _ in outputs}))

    written: dict[str, list[Path] | Path] = {
        "masks": [out / f"{stem}_mask_{i}.png" for i in range(result.num_masks)],
        "masked_images": [out / f"{stem}_masked_img_{i}.jpg" for i in range(result.num_masks)],
        "overlay": out / f"{stem}_overlay.jpg",
    }
    written.update({name: out / f"{stem}_{name}.png" for name in result.extra_images})
    written.update({name: out / name for name in files or {}})
    if "trace" in result.info:
        written["trace"] = out / f"{stem}_trace.json"
    written["json"] = out / f"{stem}.json"
    return written


def _stale(stem: str, count: int, written: set[str] = frozenset()):
    """Picks an earlier result's extra files for ``stem``: mask files with an index >= ``count``, an agent's
    step pictures and trace that this result (``written``) does not have; they would now contradict the json."""
    def stale(name: str) -> bool:
        if name not in written and (name == f"{stem}_trace.json" or (
                name.startswith(f"{stem}_step_") and name.endswith(".png") and name[len(stem) + 6:-4].isdigit())):
            return True
        for prefix, suffix in ((f"{stem}_mask_", ".png"), (f"{stem}_masked_img_", ".jpg")):
            if name.startswith(prefix) and name.endswith(suffix):
                index = name[len(prefix):-len(suffix)]
                if index.isdigit() and int(index) >= count:
                    return True
        return False

    return stale


def _record(result: SegmentationResult, rgb: np.ndarray, stem: str, extra: dict | None) -> dict:
    return {
        "image": stem,
        "image_size": list(result.image_size) if result.num_masks else [rgb.shape[0], rgb.shape[1]],
        "answer": result.text,
        "num_masks": result.num_masks,
        "boxes_xyxy": np.round(result.boxes, 2).tolist(),
        "scores": [round(float(s), 6) for s in result.scores],
        "labels": list(result.labels),
        "masks": [mask_to_rle(m) for m in result.masks],
        "timings": {k: round(float(v), 6) for k, v in result.timings.items()},
        "info": {k: v for k, v in result.info.items() if k != "trace"} | (
            {"trace": f"{stem}_trace.json"} if "trace" in result.info else {}),
        **(extra or {}),
    }
