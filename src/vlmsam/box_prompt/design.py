"""The ``box_prompt`` design as the registry knows it (entry point ``vlmsam.designs``)."""

from __future__ import annotations

from vlmsam.box_prompt.training_config import BoxPromptTrainConfig
from vlmsam.engine.spec import BuildSpec, Design, TrainingSpec


def _build(spec: BuildSpec):
    from vlmsam.box_prompt.segmenter import build

    return build(spec)


def _model(config: BoxPromptTrainConfig):
    from vlmsam.box_prompt.training import BoxPromptTrainingModel

    return BoxPromptTrainingModel.build(config)


def _segmenter(model):
    from vlmsam.box_prompt.training import segmenter

    return segmenter(model)


def _collator(model):
    return model.collator


def _prepare(model, context) -> None:
    if context.cfg.train.sam_embedding_cache:
        from vlmsam.errors import CheckpointError

        raise CheckpointError("train.sam_embedding_cache does not apply to box_prompt: only its VLM trains; leave it out")


def _answer_frame(model):
    return model.processor.resized_size


def _checkpointing(model, enabled: bool) -> None:
    from vlmsam.vlm.runtime import set_gradient_checkpointing

    set_gradient_checkpointing(model.vlm, enabled)


DESIGN = Design(name="box_prompt", build=_build, accepts=frozenset({"path", "vlm", "sam", "vlm_endpoint", "max_new_tokens", "style"}),
                summary="the VLM answers boxes and points in its grounding format; SAM draws them (Qwen-VL + SAM, Seg-Zero)",
                training=TrainingSpec(config_class=BoxPromptTrainConfig, build=_model, collator=_collator,
                                      segmenter=_segmenter, prepare=_prepare, answer_frame=_answer_frame,
                                      gradient_checkpointing=_checkpointing))
