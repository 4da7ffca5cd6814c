"""The ``proposal_select`` design as the registry knows it (entry point ``vlmsam.designs``)."""

from __future__ import annotations

from vlmsam.engine.spec import BuildSpec, Design, TrainingSpec
from vlmsam.proposal_select.config import LlmSegConfig


def _build(spec: BuildSpec):
    from vlmsam.proposal_select.segmenter import build

    return build(spec)


def _model(config: LlmSegConfig):
    from vlmsam.proposal_select.llmseg import LlmSegModel

    return LlmSegModel.build(config)


def _segmenter(model):
    from vlmsam.proposal_select.segmenter import llmseg_segmenter

    return llmseg_segmenter(model)


def _collator(model):
    return model.collator


def _answer_frame(model):
    return model.processor.resized_size


def _prepare(model, context) -> None:
    if context.cfg.train.sam_embedding_cache:
        from vlmsam.errors import CheckpointError

        raise CheckpointError("train.sam_embedding_cache does not apply to proposal_select: it trains on stored "
                              "proposals (model.proposals) and runs no SAM; leave it out")


def _checkpointing(model, enabled: bool) -> None:
    from vlmsam.vlm.runtime import set_gradient_checkpointing

    set_gradient_checkpointing(model.vlm, enabled)


DESIGN = Design(
    name="proposal_select", build=_build, accepts=frozenset({"path", "vlm", "sam", "vlm_endpoint", "max_new_tokens"}),
    summary="SAM proposes regions; the VLM picks them by number (marks) or a trained head on [SEG] (LLM-Seg)",
    training=TrainingSpec(config_class=LlmSegConfig, build=_model, collator=_collator, segmenter=_segmenter,
                          prepare=_prepare, answer_frame=_answer_frame, gradient_checkpointing=_checkpointing))
