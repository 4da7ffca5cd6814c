"""Design names -> builders. Each design package registers itself on import; a checkpoint records
its design (``model_type`` in ``vlmsam_config.json``), so loading one needs no ``--segmenter``."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


# name -> the module that registers it (imported only when that design is asked for)
_MODULES = {"seg_token": "vlmsam.seg_token.segmenter", "box_prompt": "vlmsam.box_prompt.segmenter",
            "gsam": "vlmsam.gsam.segmenter", "grounded": "vlmsam.gsam.segmenter",
            "proposal_select": "vlmsam.proposal_select.segmenter"}
_BUILDERS: dict[str, Callable] = {}
_TRAINABLE: dict[str, Trainable] = {}


@dataclass(frozen=True)
class Trainable:
    """What ``vlmsam train`` needs of a design it can train.

    Attributes:
        config_class: the dataclass of the config's ``model`` section (chosen by ``model.model_type``).
        build: ``config -> model``; the model's ``forward(batch)`` returns an object whose
            ``losses()`` is a dict of named loss tensors (``loss`` is optimised, all are logged), and
            it has ``collator``, ``save_pretrained``, ``load_trainable`` and ``trainable_summary``.
        segmenter: ``model -> segmenter`` for validation by generation through the contract.
    """

    config_class: type
    build: Callable
    segmenter: Callable


def register_trainable(name: str, config_class: type, build: Callable, segmenter: Callable) -> None:
    _TRAINABLE[name] = Trainable(config_class, build, segmenter)


def trainable(name: str) -> Trainable:
    builder(name)  # imports the design, which registers itself
    if name not in _TRAINABLE:
        raise CheckpointError(f"the '{name}' segmenter has nothing to train")
    return _TRAINABLE[name]


def register(name: str, builder: Callable) -> None:
    """``builder(path=None, *, vlm=None, sam=None, device=None, dtype=None, **options)`` -> a segmenter."""
    _BUILDERS[name] = builder


def available() -> tuple[str, ...]:
    return tuple(_MODULES)


def builder(name: str) -> Callable:
    if name not in _MODULES:
        raise CheckpointError(f"unknown segmenter '{name}'; available: {', '.join(available())}")
    if name not in _BUILDERS:
        importlib.import_module(_MODULES[name])
    return _BUILDERS[name]


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


def model_type(path: Path) -> str:
    """The design a checkpoint directory records (``seg_token`` for checkpoints that predate the field)."""
    return str(read_config(path).get("model_type", "seg_token")).removeprefix("vlmsam_")  # written as "vlmsam_<design>"


def load(path: str | Path | None = None, segmenter: str | None = None, **kwargs):
    """A segmenter from a checkpoint directory (its recorded design) or, with ``segmenter``, from base models."""
    if segmenter is not None:
        builder(segmenter)  # an unknown name is the first thing to report
    if path is not None:
        recorded = model_type(Path(path))
        if segmenter is not None and segmenter != recorded:
            raise CheckpointError(f"{path}: is a '{recorded}' checkpoint, not '{segmenter}' (leave out --segmenter)")
        segmenter = recorded
    return builder(segmenter or "seg_token")(path, **kwargs)
