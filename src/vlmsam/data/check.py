"""``vlmsam data check``: walk a dataset tree before an expensive run and list what is unusable.

For every dataset and split it counts the samples, the missing images, the unreadable images and
the broken annotations, naming each file at fault. Images are decoded (at reduced scale where
the format allows), annotations are turned into masks exactly as training will.
"""

from __future__ import annotations

import random
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from vlmsam.data.base import SegDataset
from vlmsam.data.reason_seg import ReasonSegDataset, find_root
from vlmsam.data.refer_seg import SPLIT_BY, ReferSegDataset, splits_of
from vlmsam.data.registry import FAMILIES, DEFAULT_DATA, split_list
from vlmsam.data.sample import BadSample
from vlmsam.data.seg_pp import KINDS as SEG_PP_KINDS
from vlmsam.data.seg_pp import SegPlusPlusDataset
from vlmsam.data.sem_seg import SEM_SEG
from vlmsam.data.vqa import VqaDataset
from vlmsam.errors import VlmsamError

PROBLEMS = ("missing images", "unreadable images", "broken annotations")


@dataclass
class Report:
    name: str
    split: str
    samples: int = 0
    problems: dict = field(default_factory=lambda: defaultdict(dict))  # kind -> {path: reason}
    absent: str = ""  # why the dataset could not be opened at all
    notes: dict = field(default_factory=dict)  # where -> what: worth knowing, not a problem

    @property
    def ok(self) -> bool:
        return not self.absent and not any(self.problems.values())


def check_image(path: Path) -> str | None:
    """None if the image decodes; else a short reason. JPEGs decode at reduced scale (fast)."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (256, 256))
            im.load()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def check_dataset(ds: SegDataset, report: Report, workers: int = 4, progress: bool = True) -> Report:
    report.samples = len(ds)
    seen_images: dict[Path, str | None] = {}

    def one(i: int):
        image = ds.image_path(i)
        if not image.is_file():
            return ("missing images", str(image), "not found")
        if image not in seen_images:
            seen_images[image] = check_image(image)
        if seen_images[image] is not None:
            return ("unreadable images", str(image), seen_images[image])
        try:
            if type(ds).load_eval is not SegDataset.load_eval:  # covers every target of the image
                ds.load_eval(i)
            else:
                ds.load(i, random.Random(i))
        except BadSample as exc:
            return ("broken annotations", exc.path, exc.reason)
        return None

    with ThreadPoolExecutor(workers) as pool:  # PIL and json release the GIL while decoding
        results = pool.map(one, range(len(ds)))
        for res in tqdm(results, total=len(ds), desc=f"{report.name}:{report.split}", unit="sample",
                        disable=not progress or len(ds) < 50, leave=False):
            if res:
                kind, path, reason = res
                report.problems[kind].setdefault(path, reason)
    report.notes.update(ds.notes)
    return report


def _opened(name: str, split: str, build) -> tuple[Report, SegDataset | None]:
    report = Report(name, split)
    try:
        return report, build()
    except VlmsamError as exc:
        report.absent = str(exc)
        return report, None


def datasets_to_check(root: Path, families: list[str], lists: dict[str, str], explicit: bool):
    """(report, dataset) pairs for everything named, or everything present when nothing was named."""
    out = []
    unknown = [f for f in families if f not in FAMILIES and f != "seg++"]
    if unknown:
        raise VlmsamError(f"unknown dataset family '{unknown[0]}'; choose from {', '.join(FAMILIES)}")
    for family in families:
        names = split_list(lists.get(family) or DEFAULT_DATA["seg_pp" if family == "seg++" else family])
        if family == "reason_seg":
            base = find_root(root)
            splits = [s for s in ("train", "val", "test") if (base / s).is_dir()]
            if not splits and explicit:
                out.append((Report("reason_seg", "-", absent=f"{base}: no train/val/test folders"), None))
            # built as training builds it (explanatory answers too), so a broken explanatory file shows here
            out += [_opened("reason_seg", s, lambda s=s: ReasonSegDataset(root, s)) for s in splits]
        elif family == "refer_seg":
            for name in names:
                refs = root / "refer_seg" / name / f"refs({SPLIT_BY.get(name, 'unc')}).p"
                if not refs.is_file():
                    if explicit:
                        out.append((Report(name, "-", absent=f"{refs}: missing"), None))
                    continue
                try:
                    splits = splits_of(refs, refs.parent / "instances.json")
                except VlmsamError as exc:
                    out.append((Report(name, "-", absent=str(exc)), None))
                    continue
                out += [_opened(name, s, lambda n=name, s=s: ReferSegDataset(root, n, s)) for s in splits]
        elif family == "sem_seg":
            for name in names:
                report, ds = _opened(name, "train", lambda n=name: SEM_SEG[n](root))
                if ds is not None or explicit:
                    out.append((report, ds))
        elif family == "vqa":
            for name in names:
                file = name if name.endswith(".json") else name + ".json"
                report, ds = _opened(name, "train", lambda f=file: VqaDataset(root, f))
                if ds is not None or explicit:
                    out.append((report, ds))
        elif family in ("seg_pp", "seg++"):
            kinds = [k for k in names if k in SEG_PP_KINDS]
            for kind in kinds:
                if (root / "seg++" / f"{kind}.arrow").is_file() or explicit:
                    out.append(_opened(f"seg++/{kind}", "train", lambda k=kind: SegPlusPlusDataset(root, [k])))
    return out


def run_check(root: str | Path, families: list[str] | None = None, lists: dict[str, str] | None = None,
              workers: int = 4, progress: bool = True, print_fn=print, max_listed: int = 50) -> bool:
    """Check, print the report, return True when everything checked is usable."""
    root = Path(root)
    if not root.is_dir():
        raise VlmsamError(f"{root}: no such dataset directory")
    explicit = families is not None
    pairs = datasets_to_check(root, families or list(FAMILIES), lists or {}, explicit)
    if not pairs:
        raise VlmsamError(f"{root}: no dataset of a known layout found (see the README, section Datasets)")
    reports = [check_dataset(ds, rep, workers, progress) if ds is not None else rep for rep, ds in pairs]
    width = max(len(f"{r.name}:{r.split}") for r in reports) + 2
    print_fn(f"{'dataset:split':<{width}}{'samples':>9}{'missing img':>13}{'unreadable img':>16}{'broken ann':>12}  status")
    for r in reports:
        counts = [len(r.problems[k]) for k in PROBLEMS]
        status = "ok" if r.ok else ("NOT FOUND" if r.absent else "PROBLEMS")
        print_fn(f"{r.name + ':' + r.split:<{width}}{r.samples:>9}{counts[0]:>13}{counts[1]:>16}{counts[2]:>12}  {status}")
    for r in reports:
        if r.absent:
            print_fn(f"\n{r.name}: {r.absent}")
        for kind in PROBLEMS:
            items = list(r.problems[kind].items())
            if items:
                print_fn(f"\n{r.name}:{r.split} {kind} ({len(items)}):")
                for path, reason in items[:max_listed]:
                    print_fn(f"  {path}: {reason}")
                if len(items) > max_listed:
                    print_fn(f"  ... and {len(items) - max_listed} more")
        if r.notes:
            print_fn(f"\n{r.name}:{r.split} notes ({len(r.notes)}; usable):")
            for where, note in sorted(r.notes.items())[:max_listed]:
                print_fn(f"  {where}: {note}")
            if len(r.notes) > max_listed:
                print_fn(f"  ... and {len(r.notes) - max_listed} more")
    ok = all(r.ok for r in reports)
    print_fn("\nall datasets usable" if ok else "\nsome data is unusable (see above)")
    return ok
