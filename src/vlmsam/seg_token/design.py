"""The ``seg_token`` design as the registry knows it (entry point ``vlmsam.designs``)."""

from __future__ import annotations

from vlmsam.engine.spec import BuildSpec, Design, TrainingSpec
from vlmsam.seg_token.config import SegTokenConfig


def _build(spec: BuildSpec):
    from vlmsam.seg_token.segmenter import build

    return build(spec)


def _model(config: SegTokenConfig):
    from vlmsam.seg_token.model import SegTokenModel

    return SegTokenModel.build(config)


def _segmenter(model):
    from vlmsam.seg_token.segmenter import SegTokenSegmenter

    return SegTokenSegmenter(model)


def _collator(model):
    return model.collator


def _answer_frame(model):
    return model.processor.resized_size


def _checkpointing(model, enabled: bool) -> None:
    from vlmsam.vlm.runtime import set_gradient_checkpointing

    set_gradient_checkpointing(model.vlm, enabled)


DESIGN = Design(
    name="seg_token", build=_build, accepts=frozenset({"path", "vlm", "sam", "max_new_tokens"}),
    summary="a [SEG] token's hidden state prompts SAM (LISA)",
    training=TrainingSpec(config_class=SegTokenConfig, build=_model, collator=_collator, segmenter=_segmenter,
                          answer_frame=_answer_frame, gradient_checkpointing=_checkpointing))
