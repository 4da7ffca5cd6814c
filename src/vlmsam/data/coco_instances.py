"""COCO-format instance annotations as SAM 3 phrase samples: every category present in an image is a
noun phrase naming all its instances; categories absent from the image are phrases naming nothing.

``data.datasets: coco_instances`` with ``data.coco_instances_data: ANNOTATIONS.json|IMAGE_DIR`` (relative to
``data.dataset_dir``; default ``annotations/instances_train2017.json|train2017``, COCO's own layout). Any
dataset exported in COCO format (Roboflow, CVAT, Label Studio) reads the same way; crowd regions are left
out, as COCO's own evaluation ignores them.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from vlmsam.data.base import SegDataset
from vlmsam.data.sample import BadSample, Sample, empty_masks
from vlmsam.errors import DatasetError

DEFAULT = "annotations/instances_train2017.json|train2017"


class CocoInstancesDataset(SegDataset):
    source = "coco_instances"

    def __init__(self, dataset_dir: str | Path, spec: str = DEFAULT, negatives: int = 2):
        super().__init__()
        from pycocotools.coco import COCO

        ann, _, images = (spec or DEFAULT).partition("|")
        self.ann_file, self.image_dir = Path(dataset_dir) / ann, Path(dataset_dir) / (images or "")
        if not self.ann_file.is_file():
            raise DatasetError(f"{self.ann_file}: no COCO annotation file; set data.coco_instances_data to ANNOTATIONS.json|IMAGE_DIR")
        try:
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):
                self.coco = COCO(str(self.ann_file))
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{self.ann_file}: not a COCO instances file ({type(exc).__name__}: {exc})") from None
        self.names = {c["id"]: str(c["name"]) for c in self.coco.dataset.get("categories", [])}
        self.items = sorted(self.coco.getImgIds())
        self.negatives, self.split = negatives, self.ann_file.stem

    def image_path(self, i: int) -> Path:
        return self.image_dir / self.coco.imgs[self.items[i]]["file_name"]

    def annotation_path(self, i: int) -> Path:
        return self.ann_file

    def image_size(self, i: int) -> tuple[int, int]:
        info = self.coco.imgs[self.items[i]]
        return int(info["height"]), int(info["width"])

    def phrase_targets(self, i: int, rng: random.Random) -> list[tuple[str, np.ndarray]]:
        """``(category name, (n, H, W) bool instances)`` for each category present, and ``negatives``
        absent categories with no instance."""
        image_id = self.items[i]
        h, w = self.image_size(i)
        by_category: dict[int, list[np.ndarray]] = {}
        for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, iscrowd=False)):
            if ann.get("category_id") not in self.names:
                raise BadSample(self.ann_file, f"image {image_id}: annotation {ann.get('id')} names category "
                                               f"{ann.get('category_id')!r}, which the file does not define")
            try:
                mask = self.coco.annToMask(ann).astype(bool)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise BadSample(self.ann_file, f"image {image_id}: annotation {ann.get('id')} has no usable segmentation ({exc})") from None
            if mask.shape != (h, w):
                raise BadSample(self.ann_file, f"image {image_id}: a mask is {mask.shape[1]}x{mask.shape[0]}, the image {w}x{h}")
            if mask.any():
                by_category.setdefault(ann["category_id"], []).append(mask)
        present = [(self.names[c], np.stack(m)) for c, m in sorted(by_category.items())]
        # a category seen here at all (a crowd region included) is never a phrase that names nothing
        seen = {a.get("category_id") for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))}
        absent = [self.names[c] for c in self.names if c not in seen]
        chosen = rng.sample(absent, min(self.negatives, len(absent)))
        return present + [(name, np.zeros((0, h, w), bool)) for name in chosen]

    def load(self, i: int, rng: random.Random) -> Sample:
        h, w = self.image_size(i)
        targets = self.phrase_targets(i, rng)
        conversations = [[(name, None)] for name, _ in targets]  # each phrase is the request; no answer text
        return Sample(self.image_path(i), conversations, empty_masks(h, w), self.source, Path(self.image_path(i)).stem,
                      {"phrase_targets": targets})
