"""Sampling training data from several datasets at set rates: deterministic, per-rank, resumable.

Sample ``k`` of rank ``r`` is drawn by a generator seeded with ``(seed, r, k)`` alone: which
family (by rate), which dataset in it (uniformly), which item, and which prompts. So a run is
reproducible, ranks see different data, DataLoader workers need no shared state, and resuming
is a matter of starting the sampler at the saved position.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import torch

from vlmsam.data.base import SegDataset
from vlmsam.data.sample import BadSample
from vlmsam.data.validate import load_checked
from vlmsam.errors import DatasetError

MAX_ATTEMPTS = 100  # bad samples skipped in a row before the data is declared unusable


@dataclass
class BadSampleLog:
    """Bad samples met so far: how many per source, and every path with its reason."""

    counts: Counter = field(default_factory=Counter)
    paths: dict = field(default_factory=dict)

    def add(self, source: str, path: str, reason: str) -> None:
        self.counts[source] += 1
        self.paths.setdefault(path, reason)

    def extend(self, skipped) -> None:
        for source, path, reason in skipped:
            self.add(source, path, reason)

    def summary(self, limit: int = 20) -> str:
        if not self.counts:
            return "bad samples: none"
        total = sum(self.counts.values())
        lines = [f"bad samples skipped: {total} (" + ", ".join(f"{s}: {n}" for s, n in sorted(self.counts.items())) + ")"]
        lines += [f"  {path}: {reason}" for path, reason in list(self.paths.items())[:limit]]
        if len(self.paths) > limit:
            lines.append(f"  ... and {len(self.paths) - limit} more")
        return "\n".join(lines)


class Mixture(torch.utils.data.Dataset):
    """A map-style dataset over sample numbers ``0, 1, 2, ...`` (each drawn as described above).

    Args:
        families: family name -> its datasets.
        rates: family name -> sampling weight.
        prepare: optional function applied to each sample in the worker (the collator's
            ``prepare``: decode the image, tokenize); its :class:`BadSample` s are skipped too.
        on_bad_sample: ``"skip"`` (count it, draw again) or ``"error"`` (raise).
    """

    def __init__(self, families: dict[str, list[SegDataset]], rates: dict[str, float], *, seed: int = 0,
                 rank: int = 0, samples_per_epoch: int = 10_000, prepare=None, on_bad_sample: str = "skip"):
        if on_bad_sample not in ("skip", "error"):
            raise ValueError("on_bad_sample must be 'skip' or 'error'")
        self.families = {name: [d for d in ds if len(d)] for name, ds in families.items()}
        empty = [name for name, ds in self.families.items() if not ds]
        if empty:
            raise DatasetError(f"no samples in dataset family {', '.join(empty)}")
        self.names = list(self.families)
        self.weights = [float(rates[name]) for name in self.names]
        self.seed, self.rank = seed, rank
        self.samples_per_epoch = samples_per_epoch
        self.prepare = prepare
        self.on_bad_sample = on_bad_sample

    def __len__(self) -> int:
        return self.samples_per_epoch

    def draw(self, k: int, attempt: int = 0) -> tuple[SegDataset, int, random.Random]:
        rng = random.Random(f"{self.seed}/{self.rank}/{k}/{attempt}")
        family = rng.choices(self.names, weights=self.weights)[0]
        dataset = rng.choice(self.families[family])
        return dataset, rng.randrange(len(dataset)), rng

    def __getitem__(self, k: int):
        skipped = []
        for attempt in range(MAX_ATTEMPTS):
            dataset, i, rng = self.draw(k, attempt)
            try:  # the checks `data check` runs, then the collator's own (tokens against targets)
                sample, image = load_checked(dataset, i, rng)
                sample.meta["skipped"] = skipped
                return self.prepare(sample, image) if self.prepare else sample
            except BadSample as exc:
                if self.on_bad_sample == "error":
                    raise
                skipped.append((dataset.source, exc.path, exc.reason))
        raise BadSample(skipped[-1][1], f"{MAX_ATTEMPTS} bad samples in a row; run `vlmsam data check` on this dataset")


class ResumableSampler(torch.utils.data.Sampler):
    """Sample numbers ``start, start + 1, ...`` to the end of the current epoch.

    A DataLoader reads ahead of the training loop, so a checkpoint should store the number of
    samples the loop has *consumed* and resume with ``ResumableSampler(n, start=consumed)``;
    :meth:`state_dict` is exact only when nothing is prefetched.
    """

    def __init__(self, samples_per_epoch: int, start: int = 0):
        self.samples_per_epoch = samples_per_epoch
        self.position = start  # samples handed out so far, over all epochs

    def __iter__(self):
        epoch_end = (self.position // self.samples_per_epoch + 1) * self.samples_per_epoch
        while self.position < epoch_end:
            k = self.position
            self.position += 1
            yield k

    def __len__(self) -> int:
        return self.samples_per_epoch - self.position % self.samples_per_epoch

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


def epoch_batches(loader, log: BadSampleLog, print_fn=print):
    """Iterate one epoch of ``loader`` (batches from the collator), counting the bad samples the
    mixture passed over, and print the bad-sample summary when the epoch ends."""
    for batch in loader:
        log.extend(batch.skipped)
        yield batch
    print_fn(log.summary())
