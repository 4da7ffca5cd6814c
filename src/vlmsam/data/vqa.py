"""Visual question answering in LLaVA's format: ``[{image, conversations: [{from, value}]}]`` (or our own
``[{role: user|assistant, content}]`` turns, which ``vlmsam data convert-llava-plus`` writes).

``llava_dataset/llava_instruct_150k.json`` names COCO images by file name (``coco/train2017``);
``llava_v1_5_mix665k.json`` names them relative to the dataset folder (``coco/train2017/...``,
``gqa/images/...``, ``ocr_vqa/images/...``, ``textvqa/train_images/...``, ``vg/VG_100K/...``).
Entries without an image (text-only chat) are left out. LLaVA's ``<image>`` marker is removed:
our processor places the vision tokens itself.
"""

from __future__ import annotations

import random
from pathlib import Path

from vlmsam.errors import DatasetError
from vlmsam.data import prompts
from vlmsam.data.base import SegDataset
from vlmsam.data.files import read_dataset_json
from vlmsam.data.sample import BadSample, Sample, empty_masks

DEFAULT_FILE = "llava_instruct_150k.json"


class VqaDataset(SegDataset):
    source = "vqa"
    split = "train"

    def __init__(self, dataset_dir: str | Path, file: str = DEFAULT_FILE):
        super().__init__()
        self.root = Path(dataset_dir)
        self.json_path = self.root / "llava_dataset" / file
        if not self.json_path.is_file():
            raise DatasetError(f"{self.json_path}: missing (LLaVA instruction data)")
        entries = read_dataset_json(self.json_path, "a JSON list of conversations", list)
        self.items = [e for e in entries if isinstance(e, dict) and isinstance(e.get("image"), str) and e["image"]]
        self.text_only = len(entries) - len(self.items)

    def annotation_path(self, i: int) -> Path:
        return self.json_path

    def image_path(self, i: int) -> Path:
        name = self.items[i]["image"]
        direct = self.root / name
        return direct if direct.is_file() else self.root / "coco" / "train2017" / name

    def load(self, i: int, rng: random.Random) -> Sample:
        entry = self.items[i]
        turns = entry.get("conversations")
        where = f"entry {i} (id {entry.get('id', '?')})"
        if not isinstance(turns, list) or len(turns) < 2 or len(turns) % 2:
            raise BadSample(self.json_path, f"{where}: conversations must alternate human/gpt turns")
        pairs = []
        for k in range(0, len(turns), 2):
            user, answer = _turn(turns[k], "human", "user"), _turn(turns[k + 1], "gpt", "assistant")
            if user is None or answer is None:
                raise BadSample(self.json_path, f"{where}: turn {k} is not a human/gpt (user/assistant) pair")
            pairs.append((prompts.strip_image_placeholder(user), answer))
        h, w = self.image_size(i)
        return Sample(self.image_path(i), [pairs], empty_masks(h, w), self.source, Path(entry["image"]).stem)


def _turn(turn, llava_name: str, role: str) -> str | None:
    """The text of a turn by ``role``, in LLaVA's spelling (``from``/``value``) or ours (``role``/``content``)."""
    if not isinstance(turn, dict):
        return None
    if turn.get("from") == llava_name:
        return str(turn.get("value", ""))
    if turn.get("role") == role:
        return str(turn.get("content", ""))
    return None
