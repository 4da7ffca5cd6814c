"""What a GRPO run writes as it goes: ``log.jsonl`` (one line per logging step: each reward term's mean, the
total, the KL, the loss, completion lengths, unusable rewards counted) and ``curves.png`` at every save and
at the end."""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback

from vlmsam.train.plots import plot_panels


class RunLog(TrainerCallback):
    def __init__(self, run_dir: Path, terms, *, resume: bool = False):
        self.path, self.png, self.terms = run_dir / "log.jsonl", run_dir / "curves.png", terms
        self.records = [] if not (resume and self.path.is_file()) else [json.loads(x) for x in self.path.read_text().splitlines() if x]
        if not resume:
            self.path.write_text("")
        self.last: dict = {}

    def on_train_begin(self, args, state, control, **kwargs):
        # a resumed run rewrites what came after its checkpoint, so the log holds each step once
        self.records = [r for r in self.records if r.get("step", 0) <= state.global_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def on_log(self, args, state, control, logs=None, **kwargs):
        values = {k.replace("/", "_"): float(v) for k, v in (logs or {}).items()
                  if isinstance(v, (int, float)) and math.isfinite(float(v))}
        if not values:
            return
        record = {"step": state.global_step, **values, "unusable_rewards": self.terms.failures}
        self.records.append(record)
        self.last = record
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def on_save(self, args, state, control, **kwargs):
        self.plot()

    def on_train_end(self, args, state, control, **kwargs):
        self.plot()

    def plot(self) -> None:
        names = [f"rewards_{n}_mean" for n in self.terms.functions_names()] + ["reward"]
        plot_panels(self.records, self.png, [("reward terms (mean per step)", names), ("kl and loss", ["kl", "loss"])])
