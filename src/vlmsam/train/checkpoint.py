"""Training checkpoints: written atomically by rank 0, the last K kept plus the best.

A checkpoint directory ``run_dir/checkpoints/step_000123/`` holds the model in the format of
:meth:`SegTokenModel.save_pretrained` (so ``vlmsam segment``, ``evaluate`` and ``merge-lora`` take it
as it is) and ``trainer_state.pt`` (optimizer, scheduler, grad scaler, step, samples consumed, RNG
states, best validation gIoU), plus the resolved ``config.yaml``. It is written under a temporary
name and renamed into place, so a kill mid-write leaves the previous checkpoints intact and no
half-written one that ``--resume auto`` could pick up. The trainer state is read back with
``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from vlmsam.errors import first_line, CheckpointError

STATE_FILE = "trainer_state.pt"
PREFIX = "step_"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary ``.tmp`` directories are not checkpoints)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith(PREFIX) and p.is_dir() and not p.name.endswith(".tmp")
            and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX):]))


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def temp_dir(run_dir: Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"{PREFIX}{step:06d}.tmp"


def save_checkpoint(run_dir: Path, step: int, model, trainer_state: dict, config_yaml: str, keep_last: int,
                    best_step: int | None, *, tmp_started: bool = False) -> Path:
    """Write ``step_{step}`` atomically, then prune to the last ``keep_last`` plus ``best_step``.

    ``tmp_started``: other ranks have already written their part (DeepSpeed shards) into the
    temporary directory; keep it."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:06d}"
    tmp = temp_dir(run_dir, step)
    if tmp.exists() and not tmp_started:
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    torch.save(trainer_state, tmp / STATE_FILE)
    (tmp / "config.yaml").write_text(config_yaml)
    for f in tmp.rglob("*"):  # flush file contents before the rename makes them visible
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    keep = {p.name for p in list_checkpoints(run_dir)[-keep_last:]} if keep_last > 0 else set()
    if best_step is not None:
        keep.add(f"{PREFIX}{best_step:06d}")
    keep.add(final.name)
    for p in list_checkpoints(run_dir):
        if p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)
    if best_step is not None:
        (Path(run_dir) / "best.json").write_text(json.dumps({"checkpoint": f"checkpoints/{PREFIX}{best_step:06d}"}))
    return final


def find_resume(run_dir: Path, resume: str) -> Path | None:
    """``auto`` -> the newest complete checkpoint of the run (None if there is none); a path -> it."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path}: not a training checkpoint (no {STATE_FILE}); use --resume auto or a step_* directory")
    return path


def load_trainer_state(path: Path) -> dict:
    try:
        return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path / STATE_FILE}: unreadable trainer state ({first_line(exc)})") from None
