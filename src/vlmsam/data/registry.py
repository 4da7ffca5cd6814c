"""Dataset names as users write them -> loader objects.

Training families (``--datasets reason_seg,refer_seg,sem_seg,vqa,seg_pp``) each hold one or more
datasets, chosen with the per-family lists (``--refer-seg-data refcoco,refcoco+``). Evaluation sets
are named ``reason_seg:val`` or ``refcoco|unc|val``.
"""

from __future__ import annotations

from pathlib import Path

from vlmsam.errors import DatasetError
from vlmsam.data.base import SegDataset
from vlmsam.data.reason_seg import ReasonSegDataset
from vlmsam.data.refer_seg import NAMES as REFER_NAMES
from vlmsam.data.refer_seg import ReferSegDataset, parse_name
from vlmsam.data.seg_pp import KINDS as SEG_PP_KINDS
from vlmsam.data.seg_pp import SegPlusPlusDataset
from vlmsam.data.sem_seg import SEM_SEG
from vlmsam.data.vqa import VqaDataset

FAMILIES = ("reason_seg", "refer_seg", "sem_seg", "vqa", "seg_pp", "synth", "coco_instances")

# What each family reads when its list is not given (LISA's defaults).
DEFAULT_DATA = {
    "reason_seg": "ReasonSeg|train",
    "refer_seg": "refclef,refcoco,refcoco+,refcocog",
    "sem_seg": "ade20k,cocostuff,pascal_part,paco_lvis,mapillary",
    "vqa": "llava_instruct_150k",
    "seg_pp": ",".join(SEG_PP_KINDS),
    "synth": "train",
    "coco_instances": "annotations/instances_train2017.json|train2017",  # SAM 3 phrase training
}


def split_list(text: str | list | tuple) -> list[str]:
    """``a,b`` or LISA's ``a||b`` -> ``[a, b]``."""
    if isinstance(text, (list, tuple)):
        return [str(t) for t in text]
    return [t.strip() for t in str(text).replace("||", ",").split(",") if t.strip()]


def build_family(family: str, dataset_dir: str | Path, spec: str | None = None, **kwargs) -> list[SegDataset]:
    """The training datasets of one family."""
    spec = spec or DEFAULT_DATA[family]
    if family == "reason_seg":
        out = []
        for entry in split_list(spec):
            split = entry.split("|")[-1] if "|" in entry else "train"
            out.append(ReasonSegDataset(dataset_dir, split, **kwargs))
        return out
    if family == "refer_seg":
        for name in split_list(spec):
            if name not in REFER_NAMES:
                raise DatasetError(f"unknown refer dataset '{name}'; choose from {', '.join(REFER_NAMES)}")
        return [ReferSegDataset(dataset_dir, name, "train", **kwargs) for name in split_list(spec)]
    if family == "sem_seg":
        names = split_list(spec)
        unknown = [n for n in names if n not in SEM_SEG]
        if unknown:
            raise DatasetError(f"unknown semantic dataset(s) {unknown}; choose from {', '.join(SEM_SEG)}")
        return [SEM_SEG[n](dataset_dir, **kwargs) for n in names]
    if family == "vqa":
        return [VqaDataset(dataset_dir, name if name.endswith(".json") else name + ".json") for name in split_list(spec)]
    if family == "synth":  # the project's own scenes (vlmsam data synth), ReasonSeg layout
        from vlmsam.data.synth_dataset import SynthDataset

        return [SynthDataset(dataset_dir, split, **kwargs) for split in split_list(spec)]
    if family == "coco_instances":
        from vlmsam.data.coco_instances import CocoInstancesDataset

        return [CocoInstancesDataset(dataset_dir, entry) for entry in split_list(spec)]
    if family in ("seg_pp", "seg++"):
        return [SegPlusPlusDataset(dataset_dir, split_list(spec), **kwargs)]
    raise DatasetError(f"unknown dataset family '{family}'; choose from {', '.join(FAMILIES)}")


def build_eval_dataset(spec: str, dataset_dir: str | Path, *, multi_part: str = "sum") -> SegDataset:
    """``reason_seg:val`` / ``ReasonSeg|val`` / ``refcoco|unc|val`` -> a dataset with ``load_eval``.

    ``multi_part`` says how a referring target made of several parts is built: ``"sum"`` as the
    published evaluation builds it (the default, so scores compare with papers) or ``"or"``.
    """
    if spec.startswith(("reason_seg:", "ReasonSeg|", "reason_seg|")):
        return ReasonSegDataset(dataset_dir, spec.replace(":", "|").split("|")[-1])
    name, split_by, split = parse_name(spec)
    return ReferSegDataset(dataset_dir, name, split, split_by=split_by, eval_multi_part=multi_part)
