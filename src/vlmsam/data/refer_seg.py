"""Referring segmentation: refcoco, refcoco+, refcocog (umd) and refclef (unc).

``refer_seg/<name>/refs(<by>).p`` is a pickle list of ``{ref_id, ann_id, image_id, split,
sentences: [{sent}]}``; ``refer_seg/<name>/instances.json`` holds the COCO images and annotations
(polygons or RLE). COCO images live in ``refer_seg/images/mscoco/images/train2014``, refclef's in
``refer_seg/images/saiapr_tc-12``. The pickle is read with a restricted unpickler (it is untrusted
input: a pickle can run code).

An object annotated in several parts is one target. Training ORs the parts; evaluation by default
*sums* them as the published code does (2 where parts overlap, which LISA's metric counts as
background), so scores compare with published numbers; ``eval_multi_part="or"`` scores the union.
"""

from __future__ import annotations

import functools
import random
from collections import defaultdict
from pathlib import Path

import numpy as np

from vlmsam.errors import DatasetError
from vlmsam.data import prompts
from vlmsam.data.base import SegDataset, sample_without_replacement
from vlmsam.data.files import read_dataset_json
from vlmsam.data.masks import COMBINE, coco_segmentation_to_mask
from vlmsam.data.safe_pickle import load_pickle
from vlmsam.data.sample import BadSample, Sample

SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "refclef": "unc"}
NAMES = tuple(SPLIT_BY)


def parse_name(spec: str) -> tuple[str, str, str]:
    """``refcoco|unc|val`` -> (``refcoco``, ``unc``, ``val``); ``refcocog|val`` uses the default split-by."""
    parts = spec.split("|")
    if parts[0] not in SPLIT_BY or len(parts) not in (2, 3):
        raise DatasetError(f"'{spec}' is not a refer dataset name; use e.g. refcoco|unc|val, refcocog|umd|test")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else (parts[0], SPLIT_BY[parts[0]], parts[1])


@functools.lru_cache(maxsize=4)
def _read_refer_files(refs_path: Path, instances_path: Path, stamp: tuple):
    refs = load_pickle(refs_path)
    if not isinstance(refs, list):
        raise BadSample(refs_path, "expected a list of refs")
    instances = read_dataset_json(instances_path, "a COCO instances file (images, annotations)", dict)
    try:
        images = {img["id"]: img for img in instances["images"]}
        anns = {ann["id"]: ann for ann in instances["annotations"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise BadSample(instances_path, f"not a COCO instances file ({type(exc).__name__}: {exc})") from None
    return refs, images, anns


def read_refer_files(refs_path: Path, instances_path: Path) -> tuple[list, dict, dict]:
    """The refs, images by id and annotations by id, parsed once per file version: every split of a
    dataset (and ``vlmsam data check``) shares one parse of a ``instances.json`` that can be 100 MB."""
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in (refs_path, instances_path))
    return _read_refer_files(refs_path, instances_path, stamp)


def splits_of(refs_path: Path, instances_path: Path) -> list[str]:
    refs, _, _ = read_refer_files(refs_path, instances_path)
    return sorted({r.get("split") for r in refs if isinstance(r, dict)} - {None})


class ReferSegDataset(SegDataset):
    def __init__(self, dataset_dir: str | Path, name: str = "refcoco", split: str = "train", *,
                 split_by: str | None = None, max_refs: int = 3, eval_multi_part: str = "sum"):
        super().__init__()
        if eval_multi_part not in COMBINE:
            raise DatasetError(f"multi-part targets are combined by one of {', '.join(COMBINE)}, not '{eval_multi_part}'")
        self.eval_multi_part = eval_multi_part
        if name not in SPLIT_BY:
            raise DatasetError(f"unknown refer dataset '{name}'; choose from {', '.join(NAMES)}")
        self.source, self.split = name, split
        self.split_by = split_by or SPLIT_BY[name]
        self.max_refs = max_refs
        base = Path(dataset_dir) / "refer_seg"
        self.refs_path = base / name / f"refs({self.split_by}).p"
        self.instances_path = base / name / "instances.json"
        self.image_dir = base / "images" / ("saiapr_tc-12" if name == "refclef" else "mscoco/images/train2014")
        for p in (self.refs_path, self.instances_path):
            if not p.is_file():
                raise DatasetError(f"{p}: missing (needed for {name})")

        refs, self.images, self.anns = read_refer_files(self.refs_path, self.instances_path)

        by_image: dict[int, list[dict]] = defaultdict(list)
        for ref in refs:
            if isinstance(ref, dict) and ref.get("split") == split:
                by_image[ref.get("image_id")].append(ref)
        # One sample per image (its refs are the targets), in a stable order.
        self.items = [(image_id, by_image[image_id]) for image_id in sorted(by_image, key=str)]

    def annotation_path(self, i: int) -> Path:
        return self.refs_path

    def image_path(self, i: int) -> Path:
        image_id, _ = self.items[i]
        img = self.images.get(image_id)
        if img is None:
            return self.image_dir / f"<image id {image_id} not in instances.json>"
        return self.image_dir / img["file_name"]

    def _targets(self, i: int, combine: str = "or") -> list[tuple[list[str], np.ndarray]]:
        """For each ref of image ``i``: its sentences and its mask (parts merged by ``combine``)."""
        image_id, refs = self.items[i]
        img = self.images.get(image_id)
        if img is None:
            raise BadSample(self.instances_path, f"image id {image_id} (used by refs) is not in instances.json")
        h, w = int(img["height"]), int(img["width"])
        out = []
        for ref in refs:
            ann = self.anns.get(ref.get("ann_id"))
            if ann is None:
                raise BadSample(self.instances_path, f"annotation {ref.get('ann_id')} of ref {ref.get('ref_id')} is missing")
            sentences = [s.get("sent", "") for s in ref.get("sentences", []) if isinstance(s, dict)]
            sentences = [s for s in sentences if s.strip()]
            if not sentences:
                raise BadSample(self.refs_path, f"ref {ref.get('ref_id')} has no sentences")
            if ann.get("segmentation") in ([], {}):
                self.notes[f"{self.instances_path} annotation {ann.get('id')}"] = \
                    "empty segmentation: an all-zero target, as the published code builds it"
            try:
                mask = coco_segmentation_to_mask(ann["segmentation"], h, w, combine)
            except (KeyError, ValueError, TypeError) as exc:
                raise BadSample(self.instances_path, f"annotation {ann.get('id')}: {exc}") from None
            out.append((sentences, mask))
        return out

    def load(self, i: int, rng: random.Random) -> Sample:
        targets = sample_without_replacement(self._targets(i), self.max_refs, rng)
        sentences = [rng.choice(s) for s, _ in targets]
        masks = np.stack([m for _, m in targets])
        return Sample(self.image_path(i), prompts.class_conversations(sentences, rng), masks, self.source,
                      self.image_path(i).stem)

    def load_eval(self, i: int) -> Sample:
        """Every sentence of every ref of the image, one request each (the standard protocol)."""
        queries, masks = [], []
        for sentences, mask in self._targets(i, self.eval_multi_part):
            for s in sentences:
                queries.append(s)
                masks.append(mask)
        conversations = [[(prompts.eval_question(q, False), prompts.EVAL_ANSWER)] for q in queries]
        return Sample(self.image_path(i), conversations, np.stack(masks), self.source, self.image_path(i).stem,
                      {"queries": queries, "is_sentence": [False] * len(queries)})
