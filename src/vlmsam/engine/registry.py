"""Design names -> :class:`~vlmsam.engine.spec.Design`. Designs register through the ``vlmsam.designs``
entry-point group (ours in pyproject.toml, a design in another package in its own) or :func:`register`;
a checkpoint records its design (``model_type`` in ``vlmsam_config.json``), so loading one needs no
``--segmenter``."""

from __future__ import annotations

import functools
import importlib.metadata
import json
from pathlib import Path

from vlmsam.engine.spec import BuildSpec, Design, TrainingSpec
from vlmsam.errors import CheckpointError

CONFIG_NAME = "vlmsam_config.json"
# The bundled offline default, shipped inside the package (made by `make tiny-model`).
DEFAULT_MODEL_NAME = "vlmsam-tiny"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "weights" / DEFAULT_MODEL_NAME



def bundled_default(name: str, rebuild: str) -> Path:
    """The directory of a bundled offline default (``weights/<name>``), or a one-line error that says
    ``rebuild`` (the make target) restores it."""
    path = DEFAULT_MODEL_DIR.parent / name
    if not (path / CONFIG_NAME).is_file():
        raise CheckpointError(f"{path}: the bundled {name} is missing from this installation; `{rebuild}` rebuilds it")
    return path


ENTRY_POINT_GROUP = "vlmsam.designs"
DEFAULT_DESIGN = "seg_token"  # what loads when nothing names a design
_REGISTERED: dict[str, Design] = {}  # by register(): a design defined in a script or a test


def register(design: Design) -> Design:
    """Make ``design`` available by name in this process (an installed package registers through the
    ``vlmsam.designs`` entry point instead, and needs no call)."""
    if not isinstance(design, Design):
        raise TypeError(f"register takes a vlmsam.engine.spec.Design, not {type(design).__name__}")
    _REGISTERED[design.name] = design
    return design


@functools.cache
def _entry_points() -> dict:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available() -> tuple[str, ...]:
    """Every design's name: the installed ones (entry points) and those registered in this process."""
    return tuple(sorted(set(_entry_points()) | set(_REGISTERED)))


def design(name: str) -> Design:
    """The design registered as ``name`` (its package is imported only now)."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    ep = _entry_points().get(name)
    if ep is None:
        raise CheckpointError(f"unknown segmenter '{name}'; available: {', '.join(available())}")
    found = ep.load()
    if not isinstance(found, Design) or found.name != name:
        raise CheckpointError(f"the '{name}' entry point ({ep.value}) is not a vlmsam Design named '{name}'")
    _REGISTERED[name] = found
    return found


def trainable(name: str) -> TrainingSpec:
    """How ``vlmsam train`` trains the design ``name``."""
    found = design(name)
    if found.training is None:
        raise CheckpointError(f"the '{name}' segmenter has nothing to train")
    return found.training


def read_config(path: str | Path) -> dict:
    """A checkpoint directory's ``vlmsam_config.json`` as a dict (one clear error when it is not usable)."""
    config = Path(path) / CONFIG_NAME
    try:
        data = json.loads(config.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a vlmsam checkpoint (no {CONFIG_NAME})") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{config}: unreadable ({type(exc).__name__}: {exc}); re-export the checkpoint") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{config}: expected a JSON object")
    return data


def part(path: str | Path, settings: dict, name: str) -> str:
    """Where a checkpoint's part ``name`` (``vlm``, ``sam``, ``detector``) is: recorded relative to the
    checkpoint (a bundle may name another bundle's, ``../vlmsam-tiny/sam``), or a hub id / absolute path."""
    recorded = str(settings.get(name, name))
    local = Path(path) / recorded
    return str(local) if not Path(recorded).is_absolute() and local.exists() else recorded


def model_type(path: Path) -> str:
    """The design a checkpoint directory records (``seg_token`` for checkpoints that predate the field)."""
    return str(read_config(path).get("model_type", "seg_token")).removeprefix("vlmsam_")  # written as "vlmsam_<design>"


def load(spec: BuildSpec | str | Path, segmenter: str | None = None):
    """A segmenter: the design a checkpoint directory (``spec.path``, or ``spec`` itself given as a path)
    records, or ``segmenter`` built from base models or its bundled default. A field the design does not
    take is a :class:`UsageError`."""
    if not isinstance(spec, BuildSpec):
        spec = BuildSpec(path=spec)
    if segmenter is not None:
        design(segmenter)  # an unknown name is the first thing to report
    if spec.path not in (None, "") and Path(spec.path).is_dir():
        recorded = model_type(Path(spec.path))
        if segmenter is not None and segmenter != recorded:
            raise CheckpointError(f"{spec.path}: is a '{recorded}' checkpoint, not '{segmenter}' (leave out --segmenter)")
        segmenter = recorded
    return design(segmenter or DEFAULT_DESIGN)(spec)
