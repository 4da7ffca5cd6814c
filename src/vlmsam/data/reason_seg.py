"""ReasonSeg: ``reason_seg/ReasonSeg/{train,val,test}/X.jpg`` + LabelMe-style ``X.json``.

Each json holds ``text`` (a list of instructions about the image), ``is_sentence`` (long reasoning
sentence or short phrase) and ``shapes`` (``[{label, points}]``). One target per image, built
pixel for pixel as the published evaluation builds it (:func:`mask_from_shapes`): polygons are
drawn largest-area first, so small shapes drawn later stay on top; a label that contains "ignore"
is drawn as 255; the deprecated "flag" shapes are skipped. ``explanatory/train.json``
(``[{image, query, outputs}]``) adds answers that explain themselves.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlmsam.data import prompts
from vlmsam.data.base import SegDataset, sample_without_replacement
from vlmsam.data.files import read_dataset_json
from vlmsam.data.masks import draw_polygon, polygon_points
from vlmsam.data.sample import IGNORE, BadSample, Sample
from vlmsam.engine.contract import check_request
from vlmsam.errors import DatasetError, PromptError
from vlmsam.io.files import json_type

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def find_root(dataset_dir: Path) -> Path:
    """``reason_seg/ReasonSeg`` (LISA's layout) or ``reason_seg`` itself (Qwen-SAM's)."""
    base = Path(dataset_dir) / "reason_seg"
    return base / "ReasonSeg" if (base / "ReasonSeg").is_dir() else base


def read_annotation(path: Path) -> dict:
    """A ReasonSeg json object: UTF-8, or cp1252 where it is not (the published loader's fallback),
    read with the bounded JSON reader (a deeply nested or NaN-holding file is a BadSample naming it)."""
    try:
        anno = read_dataset_json(path, "a JSON object with text, is_sentence, shapes", cp1252=True)
    except BadSample as exc:
        raise BadSample(path, f"unreadable annotation ({exc.reason})") from None
    if not isinstance(anno, dict):
        raise BadSample(path, f"annotation is not a JSON object but {_shown(anno)}")
    return anno


@dataclass(frozen=True)
class Annotation:
    """The fields of a ReasonSeg json, each checked for its type."""

    texts: list[str]
    is_sentence: bool
    shapes: list
    kind: str | None
    phrasing: str | None = None  # synthetic scenes: the wording family of the request


def parse_annotation(anno: dict, path: Path) -> Annotation:
    """Check every field a loader reads; a wrong type is a BadSample naming the file and the field.

    ``text``: a string or a non-empty list of strings, each a usable request (``check_request``: not
    empty, at most 2,000 characters, valid text); ``is_sentence``: true/false (absent: false);
    ``shapes``: a list (of objects; each is checked where it is drawn); ``kind``: a string or absent.
    """
    texts = anno.get("text")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise BadSample(path, f"field 'text' must be a non-empty list of strings, not {_shown(anno.get('text'))}")
    for k, text in enumerate(texts):
        try:
            check_request(text)
        except PromptError as exc:
            raise BadSample(path, f"field 'text' item {k}: {str(exc).replace('the request', 'the text')}") from None
    is_sentence = anno.get("is_sentence", False)
    if not isinstance(is_sentence, bool):
        raise BadSample(path, f"field 'is_sentence' must be true or false, not {_shown(is_sentence)}")
    if "shapes" not in anno:
        raise BadSample(path, "field 'shapes' is missing (a list of {label, points}; [] for no target)")
    shapes = anno["shapes"]
    if not isinstance(shapes, list):
        raise BadSample(path, f"field 'shapes' must be a list of {{label, points}}, not {_shown(shapes)}")
    kind, phrasing = anno.get("kind"), anno.get("phrasing")
    for name, value in (("kind", kind), ("phrasing", phrasing)):
        if value is not None and not isinstance(value, str):
            raise BadSample(path, f"field '{name}' must be a string, not {_shown(value)}")
    return Annotation(texts, is_sentence, shapes, kind, phrasing)


def _shown(value) -> str:
    """A JSON value's type for an error message ("null", "a number", ...)."""
    name = json_type(value)
    return name if name == "null" else f"a JSON {name}"


def mask_from_shapes(shapes, height: int, width: int, path: Path) -> np.ndarray:
    """One ``(H, W) uint8`` target from LabelMe shapes, built as LISA's ``get_mask_from_json`` builds it.

    "flag" shapes are skipped; the others are drawn largest first, by the area of their own
    OpenCV rasterisation, in the order ``np.argsort(areas)[::-1]`` gives (so of two shapes with
    equal areas the one earlier in the file is drawn last and wins the overlap); a label containing
    "ignore" is drawn as 255, any other as 1.
    """
    if not isinstance(shapes, list):
        raise BadSample(path, f"field 'shapes' must be a list of {{label, points}}, not {_shown(shapes)}")
    kept, areas = [], []
    for k, shape in enumerate(shapes):
        try:
            if not isinstance(shape, dict):
                raise TypeError(f"it is {_shown(shape)}, not an object")
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
            what = "a list of {image, query, outputs} entries; fix or remove it"
            entries = read_dataset_json(exp_file, what, list, error=DatasetError)
            for k, entry in enumerate(entries):
                if not (isinstance(entry, dict) and isinstance(entry.get("image"), str) and isinstance(entry.get("outputs"), str)):
                    raise DatasetError(f"{exp_file}: entry {k} has no string 'image' and 'outputs'; expected {what}")
                self.explanations[Path(entry["image"]).name] = entry["outputs"]

    def annotation_path(self, i: int) -> Path:
        return self.items[i]

    def image_path(self, i: int) -> Path:
        json_path = self.items[i]
        for suffix in IMAGE_SUFFIXES:
            candidate = json_path.with_suffix(suffix)
            if candidate.exists():  # a FIFO or a folder by that name is the image, refused when it is read
                return candidate
        return json_path.with_suffix(".jpg")

    def _read(self, i: int) -> tuple[Annotation, np.ndarray]:
        path = self.items[i]
        anno = parse_annotation(read_annotation(path), path)
        h, w = self.image_size(i)
        return anno, mask_from_shapes(anno.shapes, h, w, path)

    def load(self, i: int, rng: random.Random) -> Sample:
        anno, mask = self._read(i)
        texts, is_sentence = anno.texts, anno.is_sentence
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
        anno, mask = self._read(i)
        texts, is_sentence, kind = anno.texts[:1], anno.is_sentence, anno.kind  # synthetic scenes label their kind
        conversations = [[(prompts.eval_question(t, is_sentence), prompts.EVAL_ANSWER)] for t in texts]
        return Sample(self.image_path(i), conversations, np.repeat(mask[None], len(texts), axis=0), self.source,
                      self.items[i].stem, {"queries": texts, "is_sentence": [is_sentence] * len(texts),
                                           "kinds": [kind] * len(texts), "phrasings": [anno.phrasing] * len(texts)})
