"""``vlmsam data check``: walk a dataset tree before an expensive run and list what is unusable.

For every dataset and split it counts the samples, the missing images, the unreadable images and
the broken annotations, naming each file at fault. Every sample goes through the one check
``evaluate``, ``score`` and ``train`` run (:func:`vlmsam.data.validate.load_checked`): the image is
loaded as the models load it, the annotation parsed and its requests checked as they will be, so
"all datasets usable" means none of them will skip or stop.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from vlmsam.data.base import SegDataset
from vlmsam.data.reason_seg import ReasonSegDataset, find_root
from vlmsam.data.refer_seg import SPLIT_BY, ReferSegDataset, splits_of
from vlmsam.data.registry import FAMILIES, DEFAULT_DATA, split_list
from vlmsam.data.sample import BROKEN_ANNOTATION, PROBLEMS, BadSample
from vlmsam.data.seg_pp import KINDS as SEG_PP_KINDS
from vlmsam.data.seg_pp import SegPlusPlusDataset
from vlmsam.data.sem_seg import SEM_SEG
from vlmsam.data.validate import ON_BAD_SAMPLE, load_checked
from vlmsam.data.vqa import VqaDataset
from vlmsam.errors import VlmsamError


@dataclass
class Report:
    name: str
    split: str
    samples: int = 0
    problems: dict = field(default_factory=lambda: defaultdict(dict))  # kind -> {path: reason}
    absent: str = ""  # why the dataset could not be opened at all
    notes: dict = field(default_factory=dict)  # where -> what: worth knowing, not a problem
    bad: Counter = field(default_factory=Counter)  # kind -> bad samples (several may share one broken file)

    @property
    def ok(self) -> bool:
        return not self.absent and not any(self.problems.values())


def check_dataset(ds: SegDataset, report: Report, workers: int = 4, progress: bool = True,
                  policy: str = "skip") -> Report:
    """Every sample through :func:`~vlmsam.data.validate.load_checked`, in the form ``evaluate`` and
    ``score`` read it (where the dataset has one) and in the form ``train`` reads it. Under the
    ``error`` policy the first bad sample (in dataset order) is raised."""
    report.samples = len(ds)
    seen_images: dict = {}  # path -> its (width, height) or its BadSample: each image decoded once
    evaluable = type(ds).load_eval is not SegDataset.load_eval

    def one(i: int):
        try:
            if evaluable:
                load_checked(ds, i, images=seen_images)
            load_checked(ds, i, random.Random(i), images=seen_images)
        except BadSample as exc:
            return exc
        return None

    with ThreadPoolExecutor(workers) as pool:  # PIL and json release the GIL while decoding
        results = pool.map(one, range(len(ds)))
        for exc in tqdm(results, total=len(ds), desc=f"{report.name}:{report.split}", unit="sample",
                        disable=not progress or len(ds) < 50, leave=False):
            if exc is not None:
                if policy == "error":
                    raise exc
                kind = exc.kind if exc.kind in PROBLEMS else BROKEN_ANNOTATION
                report.problems[kind].setdefault(exc.path, exc.reason)
                report.bad[kind] += 1
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
              workers: int = 4, progress: bool = True, print_fn=print, max_listed: int = 50,
              on_bad_sample: str = "skip") -> bool:
    """Check, print the report, return True when everything checked is usable. ``on_bad_sample``:
    ``skip`` lists and counts every bad sample; ``error`` stops at the first (a BadSample naming it)."""
    root = Path(root)
    if not root.is_dir():
        raise VlmsamError(f"{root}: no such dataset directory")
    explicit = families is not None
    pairs = datasets_to_check(root, families or list(FAMILIES), lists or {}, explicit)
    if not pairs:
        raise VlmsamError(f"{root}: no dataset of a known layout found (see the README, section Datasets)")
    if on_bad_sample not in ON_BAD_SAMPLE:
        raise VlmsamError(f"--on-bad-sample {on_bad_sample!r}: choose skip or error")
    reports = [check_dataset(ds, rep, workers, progress, on_bad_sample) if ds is not None else rep for rep, ds in pairs]
    width = max(len(f"{r.name}:{r.split}") for r in reports) + 2
    print_fn(f"{'dataset:split':<{width}}{'samples':>9}{'missing img':>13}{'unreadable img':>16}{'broken ann':>12}  status")
    for r in reports:
        counts = [len(r.problems[k]) for k in PROBLEMS]
        status = "ok" if r.ok else ("NOT FOUND" if r.absent else "PROBLEMS")
        print_fn(f"{r.name + ':' + r.split:<{width}}{r.samples:>9}{counts[0]:>13}{counts[1]:>16}{counts[2]:>12}  {status}")
    for r in reports:
        if r.absent:
            print_fn(f"\n{r.name}: {r.absent}")
        if r.bad:
            print_fn(f"\n{r.name}:{r.split}: {sum(r.bad.values())} bad sample(s) ("
                     + ", ".join(f"{r.bad[k]} {k}" for k in PROBLEMS if r.bad[k]) + ")")
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
    bad = sum(sum(r.bad.values()) for r in reports)
    print_fn("\nall datasets usable" if ok else "\nsome data is unusable (see above)" + (
        f": {bad} bad sample(s), which evaluate, score and train skip and count (--on-bad-sample skip) "
        "or stop at (--on-bad-sample error)" if bad else ""))
    return ok
