"""Semantic and part segmentation datasets: class names become questions.

Label-map datasets (one PNG of class indices per image):
  * ADE20K: ``ade20k/images/training/X.jpg`` + ``ade20k/annotations/training/X.png``; 0 is
    "other" (ignored), class k is stored as k + 1; 150 classes.
  * COCO-Stuff: ``cocostuff/train2017/X.png`` with images in ``coco/train2017/X.jpg``; 182 label
    values (255 unlabeled); the "-other" / "-stuff" classes (names with a hyphen) are too vague to
    ask for and are ignored, as in LISA.
  * Mapillary Vistas: ``mapillary/config_v2.0.json`` (class list) + ``mapillary/training/images``
    and ``mapillary/training/v2.0/labels``; "unlabeled" is ignored.
COCO-json part datasets:
  * PACO-LVIS: ``vlpart/paco/annotations/paco_lvis_v1_train.json`` (images under ``coco/``).
  * PASCAL-Part: ``vlpart/pascal_part/train.json`` (images under
    ``vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages``).
  Category names are ``obj`` or ``obj:part``; a part is asked for as "obj part" or "the part of the
  obj" (even odds). A question names a category, so its target is the union of every instance
  of that category in the image (not one instance picked at random).

Each sample asks about up to ``max_classes`` classes present in the image; pixels the label map
leaves unlabelled are 255 in every target.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import numpy as np

from vlmsam.errors import DatasetError
from vlmsam.data import prompts
from vlmsam.data.base import SegDataset, sample_without_replacement
from vlmsam.data.files import read_dataset_json, read_dataset_text
from vlmsam.data.masks import coco_segmentation_to_mask, read_label_png
from vlmsam.data.sample import IGNORE, BadSample, Sample
from vlmsam.data.sem_classes import ADE20K_CLASSES, COCO_STUFF_CLASSES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _find_image(folder: Path, stem: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        if (folder / (stem + suffix)).is_file():
            return folder / (stem + suffix)
    return folder / (stem + ".jpg")


class LabelMapDataset(SegDataset):
    """Images paired with PNG label maps; subclasses say where they are and what the values mean."""

    split = "train"

    def __init__(self, image_dir: Path, label_dir: Path, classes: list[str], *, max_classes: int = 3):
        super().__init__()
        if not label_dir.is_dir():
            raise DatasetError(f"{label_dir}: missing (the {self.source} label maps)")
        self.image_dir, self.label_dir = image_dir, label_dir
        self.classes = classes
        self.max_classes = max_classes
        self.items = sorted(label_dir.glob("*.png"))

    def annotation_path(self, i: int) -> Path:
        return self.items[i]

    def image_path(self, i: int) -> Path:
        return _find_image(self.image_dir, self.items[i].stem)

    def remap(self, label: np.ndarray) -> np.ndarray:
        """Stored values -> class indices, with 255 for pixels no question may cover."""
        return label

    def label(self, i: int) -> np.ndarray:
        path = self.items[i]
        try:
            label = self.remap(read_label_png(path))
        except (OSError, ValueError) as exc:
            raise BadSample(path, f"unreadable label map ({exc})") from None
        h, w = self.image_size(i)
        if label.shape != (h, w):
            raise BadSample(path, f"label map is {label.shape[1]}x{label.shape[0]} but the image is {w}x{h}")
        bad = np.setdiff1d(np.unique(label), [*range(len(self.classes)), IGNORE])
        if len(bad):
            raise BadSample(path, f"label values {bad.tolist()[:5]} are not classes of {self.source}")
        return label

    def load(self, i: int, rng: random.Random) -> Sample:
        label = self.label(i)
        present = [int(c) for c in np.unique(label) if c != IGNORE]
        if not present:
            raise BadSample(self.items[i], "no labelled class in the label map")
        chosen = sample_without_replacement(present, self.max_classes, rng)
        masks = np.stack([np.where(label == IGNORE, IGNORE, label == c).astype(np.uint8) for c in chosen])
        names = [self.classes[c] for c in chosen]
        return Sample(self.image_path(i), prompts.class_conversations(names, rng), masks, self.source,
                      self.items[i].stem, {"classes": names})


class Ade20kDataset(LabelMapDataset):
    source = "ade20k"

    def __init__(self, dataset_dir: str | Path, **kwargs):
        base = Path(dataset_dir) / "ade20k"
        classes = ADE20K_CLASSES
        if (base / "classes.json").is_file():
            classes = read_dataset_json(base / "classes.json", "a JSON list of class names", list, error=DatasetError)
            if not all(isinstance(c, str) for c in classes):
                raise DatasetError(f"{base / 'classes.json'}: expected a JSON list of class names (strings)")
        super().__init__(base / "images" / "training", base / "annotations" / "training", classes, **kwargs)

    def remap(self, label):
        out = label.astype(np.int16) - 1  # 0 ("other") becomes -1, then 255
        out[out < 0] = IGNORE
        out[label == IGNORE] = IGNORE
        return out.astype(np.uint8)


class CocoStuffDataset(LabelMapDataset):
    source = "cocostuff"

    def __init__(self, dataset_dir: str | Path, **kwargs):
        root = Path(dataset_dir)
        classes = COCO_STUFF_CLASSES
        custom = root / "cocostuff" / "classes.txt"
        if custom.is_file():  # "id: name" lines, the first "0: unlabeled"
            text = read_dataset_text(custom, "'id: name' lines", error=DatasetError)
            classes = [line.split(": ", 1)[-1].strip() for line in text.splitlines()[1:] if line.strip()]
            if len(classes) != len(COCO_STUFF_CLASSES):
                raise DatasetError(f"{custom}: {len(classes)} class names after '0: unlabeled', expected 182 "
                                   "(or remove the file to use the published list)")
        super().__init__(root / "coco" / "train2017", root / "cocostuff" / "train2017", classes, **kwargs)
        differ = [f"{k}: {ours!r} (published {pub!r})" for k, (ours, pub) in enumerate(zip(classes, COCO_STUFF_CLASSES))
                  if ours != pub]
        if differ:
            self.notes[str(custom)] = f"class names differ from the published list at {len(differ)} ids: " + ", ".join(differ[:5])
        self.vague = np.array([k for k, name in enumerate(classes) if "-" in name])

    def remap(self, label):
        label = label.copy()
        label[np.isin(label, self.vague)] = IGNORE
        return label


class MapillaryDataset(LabelMapDataset):
    source = "mapillary"

    def __init__(self, dataset_dir: str | Path, **kwargs):
        base = Path(dataset_dir) / "mapillary"
        config = base / "config_v2.0.json"
        if not config.exists():
            raise DatasetError(f"{config}: missing (the Mapillary class list)")
        data = read_dataset_json(config, "a Mapillary config (labels: [{readable}])", dict)
        try:
            classes = [entry["readable"].lower() for entry in data["labels"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BadSample(config, f"not a Mapillary config ({type(exc).__name__}: {exc})") from None
        super().__init__(base / "training" / "images", base / "training" / "v2.0" / "labels", classes, **kwargs)
        self.unlabeled = [k for k, name in enumerate(classes) if name == "unlabeled"]

    def remap(self, label):
        label = label.copy()
        label[np.isin(label, self.unlabeled)] = IGNORE
        return label


class CocoPartsDataset(SegDataset):
    """Object and part categories from a COCO-format json (PACO-LVIS, PASCAL-Part)."""

    split = "train"

    def __init__(self, json_path: Path, image_roots: list[Path], *, max_classes: int = 3):
        super().__init__()
        self.json_path, self.image_roots, self.max_classes = json_path, image_roots, max_classes
        if not json_path.is_file():
            raise DatasetError(f"{json_path}: missing (the {self.source} annotations)")
        data = read_dataset_json(json_path, "a COCO annotation file (images, annotations, categories)", dict)
        try:
            self.categories = {c["id"]: self._category_name(c["name"]) for c in data["categories"]}
            self.images = {img["id"]: img for img in data["images"]}
            anns = defaultdict(list)
            for ann in data["annotations"]:
                anns[ann["image_id"]].append(ann)
        except (ValueError, KeyError, TypeError) as exc:
            raise BadSample(json_path, f"not a COCO annotation file ({type(exc).__name__}: {exc})") from None
        self.items = [(image_id, anns[image_id]) for image_id in sorted(anns, key=str) if anns[image_id]]

    @staticmethod
    def _category_name(name: str):
        parts = [p.split("_(")[0].replace("_", " ") for p in name.strip().split(":")]
        return parts[0] if len(parts) == 1 else (parts[0], parts[1])

    def annotation_path(self, i: int) -> Path:
        return self.json_path

    def image_path(self, i: int) -> Path:
        img = self.images.get(self.items[i][0])
        if img is None:
            return self.image_roots[0] / f"<image id {self.items[i][0]} not in {self.json_path.name}>"
        for root in self.image_roots:
            if (root / img["file_name"]).is_file():
                return root / img["file_name"]
        return self.image_roots[0] / img["file_name"]

    def load(self, i: int, rng: random.Random) -> Sample:
        image_id, anns = self.items[i]
        img = self.images.get(image_id)
        if img is None:
            raise BadSample(self.json_path, f"image id {image_id} has annotations but no image entry")
        h, w = int(img["height"]), int(img["width"])
        by_category = defaultdict(list)
        for ann in anns:
            by_category[ann.get("category_id")].append(ann)
        chosen = sample_without_replacement(sorted(by_category, key=str), self.max_classes, rng)
        names, masks = [], []
        for cat in chosen:
            if cat not in self.categories:
                raise BadSample(self.json_path, f"category {cat} of image {image_id} is not declared")
            name = self.categories[cat]
            if isinstance(name, tuple):
                obj, part = name
                name = f"{obj} {part}" if rng.random() < 0.5 else f"the {part} of the {obj}"
            union = np.zeros((h, w), dtype=np.uint8)
            for ann in by_category[cat]:
                try:
                    union |= coco_segmentation_to_mask(ann["segmentation"], h, w)
                except (KeyError, ValueError, TypeError) as exc:
                    raise BadSample(self.json_path, f"annotation {ann.get('id')}: {exc}") from None
            names.append(name)
            masks.append(union)
        return Sample(self.image_path(i), prompts.class_conversations(names, rng), np.stack(masks), self.source,
                      Path(img["file_name"]).stem, {"classes": names})


class PacoLvisDataset(CocoPartsDataset):
    source = "paco_lvis"

    def __init__(self, dataset_dir: str | Path, **kwargs):
        root = Path(dataset_dir)
        super().__init__(root / "vlpart" / "paco" / "annotations" / "paco_lvis_v1_train.json",
                         [root / "coco", root / "coco" / "train2017"], **kwargs)


class PascalPartDataset(CocoPartsDataset):
    source = "pascal_part"

    def __init__(self, dataset_dir: str | Path, **kwargs):
        base = Path(dataset_dir) / "vlpart" / "pascal_part"
        super().__init__(base / "train.json", [base / "VOCdevkit" / "VOC2010" / "JPEGImages", base], **kwargs)


SEM_SEG = {
    "ade20k": Ade20kDataset,
    "cocostuff": CocoStuffDataset,
    "mapillary": MapillaryDataset,
    "paco_lvis": PacoLvisDataset,
    "pascal_part": PascalPartDataset,
}
