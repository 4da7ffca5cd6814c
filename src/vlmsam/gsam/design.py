"""The ``gsam`` and ``grounded`` designs as the registry knows them (entry points ``vlmsam.designs``)."""

from __future__ import annotations

from vlmsam.engine.spec import BuildSpec, Design, TrainingSpec
from vlmsam.gsam.training_config import Sam3TrainConfig


def _gsam(spec: BuildSpec):
    from vlmsam.gsam.segmenter import build_gsam

    return build_gsam(spec)


def _grounded(spec: BuildSpec):
    from vlmsam.gsam.segmenter import build_grounded

    return build_grounded(spec)


GSAM = Design(name="gsam", build=_gsam, accepts=frozenset({"path", "vlm", "sam", "detector", "vlm_endpoint", "max_new_tokens"}),
              summary="the VLM names phrases in <gsam> tags; Grounding DINO boxes them; SAM draws them (LLaVA-Plus)")


def _sam3_model(config: Sam3TrainConfig):
    from vlmsam.gsam.training import Sam3TrainingModel

    return Sam3TrainingModel.build(config)


SAM3_TRAINING = TrainingSpec(config_class=Sam3TrainConfig, build=_sam3_model, collator=lambda model: model.collator,
                             segmenter=lambda model: model.segmenter())

GROUNDED = Design(name="grounded", build=_grounded, accepts=frozenset({"path", "sam", "detector"}),
                  summary="the request is the phrase: Grounding DINO boxes it and SAM draws it (lang-segment-anything), "
                          "or SAM 3 alone finds every instance",
                  training=SAM3_TRAINING)  # vlmsam train with model.model_type: grounded fine-tunes the SAM 3
