"""ReasonSeg: ``reason_seg/ReasonSeg/{train,val,test}/X.jpg`` + LabelMe-style ``X.json``.

Each json holds ``text`` (a list of instructions about the image), ``is_sentence`` (long reasoning
sentence or short phrase) and ``shapes`` (``[{label, points}]``). One target per image, built
pixel for pixel as the published evaluation builds it (:func:`mask_from_shapes`): polygons are
drawn largest-area first, so small shapes drawn later stay on top; a label that contains "ignore"
is drawn as 255; the deprecated "flag" shapes are skipped. ``explanatory/train.json``
(``[{image, query, outputs}]``) adds answers that explain themselves.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from vlmsam.errors import DatasetError
from vlmsam.data import prompts
from vlmsam.data.base import SegDataset, sample_without_replacement
from vlmsam.data.masks import draw_polygon, polygon_points
from vlmsam.data.sample import IGNORE, BadSample, Sample

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def find_root(dataset_dir: Path) -> Path:
    """``reason_seg/ReasonSeg`` (LISA's layout) or ``reason_seg`` itself (Qwen-SAM's)."""
    base = Path(dataset_dir) / "reason_seg"
    return base / "ReasonSeg" if (base / "ReasonSeg").is_dir() else base


def read_annotation(path: Path) -> dict:
    """A ReasonSeg json: UTF-8, or cp1252 where it is not (the published loader's fallback)."""
    try:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:  # a few released files are cp1252 (curly quotes, accents)
            text = raw.decode("cp1252")
        anno = json.loads(text)
    except (OSError, ValueError) as exc:
        raise BadSample(path, f"unreadable annotation ({type(exc).__name__}: {exc})") from None
    if not isinstance(anno, dict):
        raise BadSample(path, "annotation is not a JSON object")
    return anno


def mask_from_shapes(shapes, height: int, width: int, path: Path) -> np.ndarray:
    """One ``(H, W) uint8`` target from LabelMe shapes, built as LISA's ``get_mask_from_json`` builds it.

    "flag" shapes are skipped; the others are drawn largest first, by the area of their own
    OpenCV rasterisation, in the order ``np.argsort(areas)[::-1]`` gives (so of two shapes with
    equal areas the one earlier in the file is drawn last and wins the overlap); a label containing
    "ignore" is drawn as 255, any other as 1.
    """
    if shapes is None:
        shapes = []
    if not isinstance(shapes, list):
        raise BadSample(path, "'shapes' must be a list")
    kept, areas = [], []
    for k, shape in enumerate(shapes):
        try:
            label = shape["label"]
            if not isinstance(label, str):
                raise TypeError("label is not a string")
            points = polygon_points(shape["points"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BadSample(path, f"shape {k} lacks a label or has malformed points ({exc})") from None
        if label.lower() == "flag":  # deprecated, meaningless annotations
            continue
        areas.append(int(draw_polygon(np.zeros((height, width), np.uint8), points, 1).sum()))
        kept.append((IGNORE if "ignore" in label.lower() else 1, points))
    mask = np.zeros((height, width), dtype=np.uint8)
    for k in np.argsort(areas)[::-1]:  # numpy's default sort, exactly as published (ties included)
        value, points = kept[k]
        draw_polygon(mask, points, value)
    return mask


class ReasonSegDataset(SegDataset):
    source = "reason_seg"

    def __init__(self, dataset_dir: str | Path, split: str = "train", *, explanatory: float = 0.1,
                 max_queries: int = 3):
        super().__init__()
        self.root = find_root(Path(dataset_dir))
        self.split = split
        self.explanatory = explanatory
        self.max_queries = max_queries
        folder = self.root / split
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no ReasonSeg split '{split}' there")
        # Index by annotation file: an image without its json cannot be a sample.
        self.items = sorted(folder.glob("*.json"))
        self.explanations: dict[str, str] = {}
        exp_file = self.root / "explanatory" / f"{split}.json"
        if explanatory > 0 and exp_file.is_file():
            try:
                entries = json.loads(exp_file.read_text(encoding="utf-8"))
                for entry in entries:
                    self.explanations[Path(entry["image"]).name] = str(entry["outputs"])
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
                raise DatasetError(f"{exp_file}: not a list of {{image, query, outputs}} entries "
                                   f"({type(exc).__name__}: {exc}); fix or remove it") from None

    def annotation_path(self, i: int) -> Path:
        return self.items[i]

    def image_path(self, i: int) -> Path:
        json_path = self.items[i]
        for suffix in IMAGE_SUFFIXES:
            candidate = json_path.with_suffix(suffix)
            if candidate.is_file():
                return candidate
        return json_path.with_suffix(".jpg")

    def _read(self, i: int) -> tuple[list[str], bool, np.ndarray]:
        path = self.items[i]
        anno = read_annotation(path)
        texts = anno.get("text")
        if isinstance(texts, str):
            texts = [texts]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise BadSample(path, "'text' must be a non-empty list of strings")
        h, w = self.image_size(i)
        mask = mask_from_shapes(anno.get("shapes", []), h, w, path)
        return texts, bool(anno.get("is_sentence", False)), mask

    def load(self, i: int, rng: random.Random) -> Sample:
        texts, is_sentence, mask = self._read(i)
        texts = sample_without_replacement(texts, self.max_queries, rng)
        image_name = self.image_path(i).name
        explanation = self.explanations.get(image_name)
        # One draw per image: 2 = explanation only (no mask), 1 = [SEG] + explanation, 0 = [SEG].
        choice = 0
        if explanation is not None:
            choice = 2 if rng.random() < self.explanatory else rng.randint(0, 1)
        conversations, n_masks = [], 0
        for text in texts:
            if choice == 0:
                conversations.append([(prompts.question(text, is_sentence, rng), prompts.answer(rng))])
                n_masks += 1
            elif choice == 1:
                q = f"{text} {rng.choice(prompts.EXPLANATORY_QUESTIONS)}"
                conversations.append([(q, f"{prompts.answer(rng)} {explanation}")])
                n_masks += 1
            else:
                conversations.append([(text, explanation)])
        masks = np.repeat(mask[None], n_masks, axis=0)
        return Sample(self.image_path(i), conversations, masks, self.source, self.items[i].stem,
                      {"is_sentence": is_sentence})

    def load_eval(self, i: int) -> Sample:
        """The image's first instruction with the fixed evaluation prompt: one request per image,
        as in LISA's evaluation, so ``n`` and the scores compare with published numbers."""
        texts, is_sentence, mask = self._read(i)
        texts = texts[:1]
        kind = read_annotation(self.items[i]).get("kind")  # synthetic scenes label their request kind
        conversations = [[(prompts.eval_question(t, is_sentence), prompts.EVAL_ANSWER)] for t in texts]
        return Sample(self.image_path(i), conversations, np.repeat(mask[None], len(texts), axis=0), self.source,
                      self.items[i].stem, {"queries": texts, "is_sentence": [is_sentence] * len(texts),
                                           "kinds": [kind] * len(texts)})
