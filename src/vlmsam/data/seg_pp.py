"""seg++ (``seg++/{caption,cot,conversation,instance_seg}.arrow``, written by HF ``datasets``).

Answers mark objects inline; each marker becomes ``[SEG]`` and its mask comes from ``info[id]``
(COCO RLE when ``is_rle``, else polygons):
  * caption / cot: ``English Question`` / ``English Answer`` with ``《id|label》`` markers (a bracketed
    group ``[《1|a》 《2|b》]`` becomes ``[SEG] [SEG]``); image ``image_path`` (or ``img_path``).
  * conversation: ``output`` holds ``<person>: ...`` / ``<robot>: ...`` lines with ``<id|label>``
    markers, ``info[id]`` = ``{polygon}`` or ``{polygon_raw}``; image ``img_pth``.
  * instance_seg: ``English Answer`` = ``instance id is N, label name is X; ...``: one question per
    instance.
Images are COCO ``coco/train2017``. A marker whose mask is missing makes the sample bad (the
published loader drops the mask but keeps the ``[SEG]``, pairing later tokens with wrong masks).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np

from vlmsam.errors import DatasetError
from vlmsam.io.files import loads
from vlmsam.data import prompts
from vlmsam.data.base import SegDataset, sample_without_replacement
from vlmsam.data.masks import coco_segmentation_to_mask, fill_polygon
from vlmsam.data.sample import BadSample, Sample

KINDS = ("caption", "conversation", "cot", "instance_seg")
MARKER = re.compile(r"《\s*(\d+)\s*\|\s*([^》]+?)\s*》")
GROUP = re.compile(r"\[((?:\s*《\s*\d+\s*\|[^》]+》\s*)+)\]")
CONV_MARKER = re.compile(r"<\s*(\d+)\s*\|\s*([^>]+?)\s*>")
CONV_GROUP = re.compile(r"\[((?:\s*<\s*\d+\s*\|[^>]+>\s*)+)\]")
TURN = re.compile(r"^<(person|robot)>:\s*(.*)$")
INSTANCE = re.compile(r"instance id is (\d+), label name is (.+)")


def replace_markers(text: str, marker: re.Pattern, group: re.Pattern) -> tuple[str, list[str]]:
    """Markers -> ``[SEG]`` (a bracketed group -> one ``[SEG]`` per member); the ids in order."""
    ids = [m.group(1) for m in marker.finditer(text)]
    text = group.sub(lambda g: " ".join(["[SEG]"] * len(marker.findall(g.group(1)))), text)
    return marker.sub("[SEG]", text), ids


def _open_arrow(path: Path):
    try:
        from datasets import Dataset
    except ImportError:
        raise ImportError("reading seg++ needs the 'datasets' package: pip install 'vlmsam[data]'") from None
    try:
        return Dataset.from_file(str(path))
    except Exception as exc:
        raise BadSample(path, f"not a readable .arrow file ({type(exc).__name__})") from None


class SegPlusPlusDataset(SegDataset):
    source = "seg++"
    split = "train"

    def __init__(self, dataset_dir: str | Path, kinds=KINDS, *, max_instances: int = 3):
        super().__init__()
        self.root = Path(dataset_dir)
        self.image_dir = self.root / "coco" / "train2017"
        self.max_instances = max_instances
        self.tables = {}
        for kind in kinds:
            if kind not in KINDS:
                raise DatasetError(f"unknown seg++ part '{kind}'; choose from {', '.join(KINDS)}")
            path = self.root / "seg++" / f"{kind}.arrow"
            if path.is_file():
                self.tables[kind] = (path, _open_arrow(path))
        if not self.tables:
            raise DatasetError(f"{self.root / 'seg++'}: none of {', '.join(k + '.arrow' for k in kinds)} there")
        self.items = [(kind, r) for kind, (_, table) in self.tables.items() for r in range(len(table))]

    def annotation_path(self, i: int) -> Path:
        return self.tables[self.items[i][0]][0]

    def _row(self, i: int) -> dict:
        kind, r = self.items[i]
        return self.tables[kind][1][r]

    def image_path(self, i: int) -> Path:
        row = self._row(i)
        name = row.get("img_pth") if self.items[i][0] == "conversation" else (row.get("image_path") or row.get("img_path"))
        return self.image_dir / (name if isinstance(name, str) and name else "<no image named>")

    def _mask(self, row: dict, inst_id: str, h: int, w: int, i: int) -> np.ndarray:
        info = row.get("info") or {}
        if isinstance(info, str):
            try:
                info = loads(info)
            except ValueError as exc:
                raise BadSample(self.annotation_path(i), f"row {self.items[i][1]}: 'info' is not valid JSON ({exc})") from None
        ann = info.get(inst_id) if isinstance(info, dict) else None
        if ann is None:
            raise BadSample(self.annotation_path(i), f"row {self.items[i][1]}: no mask for instance {inst_id}")
        try:
            if isinstance(ann, dict) and ("polygon" in ann or "polygon_raw" in ann):
                ann = ann.get("polygon") or ann.get("polygon_raw")
            if isinstance(ann, dict) and "counts" in ann:
                return coco_segmentation_to_mask(ann, h, w)
            polygons = ann if isinstance(ann[0][0], (list, tuple)) else [ann]
            mask = np.zeros((h, w), dtype=np.uint8)
            for poly in polygons:
                mask |= fill_polygon([(round(x), round(y)) for x, y in poly], h, w)
            return mask
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            raise BadSample(self.annotation_path(i), f"row {self.items[i][1]}: bad mask for instance {inst_id} ({exc})") from None

    def load(self, i: int, rng: random.Random) -> Sample:
        kind, r = self.items[i]
        row = self._row(i)
        h, w = self.image_size(i)
        if kind in ("caption", "cot"):
            answer, ids = replace_markers(row.get("English Answer") or "", MARKER, GROUP)
            conversations = [[(row.get("English Question") or "", answer)]]
        elif kind == "conversation":
            text, ids = replace_markers(row.get("output") or "", CONV_MARKER, CONV_GROUP)
            turns, user = [], None
            for line in text.split("\n"):
                m = TURN.match(line.strip())
                if not m:
                    continue
                if m.group(1) == "person":
                    user = m.group(2)
                elif user is not None:
                    turns.append((user, m.group(2)))
                    user = None
            conversations = [turns]
        else:
            instances = [INSTANCE.match(p.strip()) for p in (row.get("English Answer") or "").split(";")]
            instances = sample_without_replacement([(m.group(1), m.group(2)) for m in instances if m], self.max_instances, rng)
            ids = [inst for inst, _ in instances]
            conversations = [[(prompts.short_question(label, rng), prompts.answer(rng))] for _, label in instances]
        sample = Sample(self.image_path(i), conversations, np.stack([self._mask(row, k, h, w, i) for k in ids]) if ids
                        else np.zeros((0, h, w), np.uint8), self.source, f"{kind}_{r}")
        if not any(conversations) or not all(conversations):
            raise BadSample(self.annotation_path(i), f"row {r}: no usable question/answer")
        if sample.seg_count != len(ids):
            raise BadSample(self.annotation_path(i), f"row {r}: {sample.seg_count} [SEG] markers but {len(ids)} masks")
        return sample
