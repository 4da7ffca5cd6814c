"""What a design declares to the registry: how it is built (:class:`BuildSpec` -> segmenter), what it
can do (:class:`Capabilities`) and, when it trains, how (:class:`TrainingSpec`).

A design package exposes one :class:`Design` object and names it in the ``vlmsam.designs`` entry-point
group (pyproject.toml); the CLI, the server, ``load_segmenter`` and the trainer reach it only through
these types, never by probing its attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from vlmsam.errors import VlmsamError


class UsageError(VlmsamError):
    """An option or flag that does not apply to the chosen design."""


# How each build field is spelled on the command line (errors name the flag a user typed).
FLAGS = {"path": "--model", "vlm": "--vlm", "sam": "--sam", "detector": "--detector",
         "vlm_endpoint": "--vlm-endpoint", "max_new_tokens": "--max-new-tokens", "style": "--style"}
ALWAYS = frozenset({"device", "dtype"})  # every design is placed on a device and a dtype


@dataclass(frozen=True)
class BuildSpec:
    """What to build a segmenter from; a field left ``None`` takes the design's default.

    Attributes:
        path: a checkpoint directory (``None``: the design's bundled default).
        vlm, sam, detector: base models by hub id or local path.
        vlm_endpoint: an OpenAI-compatible server that serves ``vlm``.
        device, dtype: where and in which precision the models run.
        max_new_tokens: the generation limit of the design's answers.
        style: how a grounding VLM is asked and answers (box_prompt: ``qwen2_5_vl``, ``seg_zero``, ...).
    """

    path: str | Path | None = None
    vlm: str | None = None
    sam: str | None = None
    detector: str | None = None
    vlm_endpoint: str | None = None
    device: Any = None
    dtype: Any = None
    max_new_tokens: int | None = None
    style: str | None = None

    def given(self) -> set[str]:
        """The fields that were set (not ``None`` and not empty)."""
        return {f.name for f in fields(self) if getattr(self, f.name) not in (None, "")}


@dataclass(frozen=True)
class Capabilities:
    """What a segmenter can do beyond the contract.

    Attributes:
        keeps_history: takes earlier ``(request, answer)`` turns (``vlmsam chat`` keeps them).
        marks_masks: its answer says where each mask goes (``[mask k]``).
        trainable: ``vlmsam train`` can train it (the design registers a :class:`TrainingSpec`).
        video: segments frames of a video (none yet).
    """

    keeps_history: bool = False
    marks_masks: bool = False
    trainable: bool = False
    video: bool = False


@dataclass(frozen=True)
class TrainingSpec:
    """What ``vlmsam train`` needs of a design it can train; the trainer reaches the design only here.

    Attributes:
        config_class: the dataclass of the config's ``model`` section (chosen by ``model.model_type``).
        build: ``config -> model``; ``model(batch)`` returns an object whose ``losses()`` is a dict of
            named loss tensors (``loss`` is optimised, all are logged); the model has
            ``save_pretrained``, ``load_trainable`` and ``trainable_summary``, and may have
            ``optimizer_groups()``: ``[{"params": [...], "lr_scale": s}, ...]``, each group at ``train.lr`` × s
            (and at its own ``weight_decay`` where a group gives one).
        collator: ``model -> collate function``; it runs in the DataLoader workers and prepares every
            per-sample feature, so the model's ``forward`` takes tensors only. Its ``prepare(sample)``
            is applied to each sample by the dataset mixture.
        segmenter: ``model -> segmenter`` for validation by generation through the contract.
        prepare: ``(model, context) -> None`` before the first step (e.g. the SAM embedding cache);
            ``context`` has ``cfg``, ``mixture``, ``info`` and ``collator``.
        answer_frame: ``model -> ((h, w) -> (h, w))`` as the model's processor resizes images (targets in
            resized pixels, such as grounding answers), or ``None``.
        gradient_checkpointing: ``(model, enabled) -> None``; ``None`` when the design has nothing to
            checkpoint.
    """

    config_class: type
    build: Callable
    collator: Callable
    segmenter: Callable
    prepare: Callable | None = None
    answer_frame: Callable | None = None
    gradient_checkpointing: Callable | None = None


@dataclass(frozen=True)
class Design:
    """One design as the registry knows it.

    Attributes:
        name: the registry name (``--segmenter NAME``; a checkpoint records it as ``model_type``).
        build: ``BuildSpec -> segmenter`` (a :class:`vlmsam.engine.contract.SegmenterBase`).
        accepts: the :class:`BuildSpec` fields it takes besides ``device`` and ``dtype``; any other given
            field is a one-line :class:`UsageError` naming the flag.
        summary: one line for ``--help`` and docs.
        training: how it trains, or ``None``.
    """

    name: str
    build: Callable[[BuildSpec], Any]
    accepts: frozenset[str]
    summary: str = ""
    training: TrainingSpec | None = None

    def check(self, spec: BuildSpec) -> None:
        """A field given that this design does not take is one line naming the flag and the design."""
        extra = sorted(spec.given() - self.accepts - ALWAYS)
        if extra:
            takes = ", ".join(flag for field_name, flag in FLAGS.items() if field_name in self.accepts)
            raise UsageError(f"{FLAGS.get(extra[0], extra[0])} does not apply to the {self.name} design "
                             f"(it takes {takes or 'no model options'}): leave it out")

    def __call__(self, spec: BuildSpec):
        self.check(spec)
        return self.build(spec)
