"""Training checkpoints: written atomically by rank 0, the last K kept plus the best.

A checkpoint directory ``run_dir/checkpoints/step_000123/`` holds the model in the format of
:meth:`SegTokenModel.save_pretrained` (so ``vlmsam segment``, ``evaluate`` and ``merge-lora`` take it
as it is) and ``trainer_state.pt`` (optimizer, scheduler, grad scaler, step, samples consumed, RNG
states, best validation gIoU), plus the resolved ``config.yaml``. It is written under a temporary
name and renamed into place, so a kill mid-write leaves the previous checkpoints intact and no
half-written one that ``--resume auto`` could pick up. The last file written before the rename is
``COMPLETE`` (every file's size): a directory without it, or whose files no longer match it (a copy
that was cut short), is not a checkpoint for ``--resume auto``. The trainer state is read back with
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
MARKER = "COMPLETE"  # written last: {relative path: size} of every file of the checkpoint
PREFIX = "step_"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _step_dirs(run_dir: Path) -> list[Path]:
    """``step_N`` directories (not the temporary ``step_N.tmp``), oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit() and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def incomplete_reason(path: Path) -> str:
    """"" for a complete checkpoint, else why it is not one (its marker is missing or does not match)."""
    from vlmsam.errors import VlmsamError
    from vlmsam.io.files import read_json

    if not (path / MARKER).exists():
        return f"no {MARKER} marker (its write or copy was interrupted)"
    try:
        listed = read_json(path / MARKER, "a checkpoint's file list", dict)
    except VlmsamError:
        return f"an unreadable {MARKER} marker"
    if STATE_FILE not in listed or not all(isinstance(v, int) for v in listed.values()):
        return f"a {MARKER} marker that lists no {STATE_FILE}"
    for name, size in listed.items():
        f = path / name
        if not f.is_file() or f.stat().st_size != size:
            return f"{name} is missing or not the size {MARKER} records (a copy cut short?)"
    return ""


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first: temporary ``.tmp`` directories and directories whose
    ``COMPLETE`` marker is missing or does not match their files are not checkpoints."""
    return [p for p in _step_dirs(run_dir) if not incomplete_reason(p)]


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
    sizes = {}
    for f in sorted(tmp.rglob("*")):  # flush file contents before the marker and the rename make them visible
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            sizes[f.relative_to(tmp).as_posix()] = f.stat().st_size
    with open(tmp / MARKER, "w", encoding="utf-8") as fh:  # last: the checkpoint is complete
        fh.write(json.dumps(sizes, indent=1))
        fh.flush()
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
        if not found and _step_dirs(run_dir):
            bad = _step_dirs(run_dir)[-1]
            raise CheckpointError(f"{bad}: not a complete checkpoint ({incomplete_reason(bad)}), and the run has no other; "
                                  "resume from one explicitly with --resume PATH, or start over with --overwrite")
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path}: not a training checkpoint (no {STATE_FILE}); use --resume auto or a step_* directory")
    if (path / MARKER).exists() and incomplete_reason(path):  # a checkpoint without a marker predates it
        raise CheckpointError(f"{path}: not a complete checkpoint ({incomplete_reason(path)})")
    return path


def load_trainer_state(path: Path) -> dict:
    try:
        return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path / STATE_FILE}: unreadable trainer state ({first_line(exc)})") from None
