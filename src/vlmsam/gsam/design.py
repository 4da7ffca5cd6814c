"""The ``gsam`` and ``grounded`` designs as the registry knows them (entry points ``vlmsam.designs``)."""

from __future__ import annotations

from vlmsam.engine.spec import BuildSpec, Design


def _gsam(spec: BuildSpec):
    from vlmsam.gsam.segmenter import build_gsam

    return build_gsam(spec)


def _grounded(spec: BuildSpec):
    from vlmsam.gsam.segmenter import build_grounded

    return build_grounded(spec)


GSAM = Design(name="gsam", build=_gsam, accepts=frozenset({"path", "vlm", "sam", "detector", "vlm_endpoint", "max_new_tokens"}),
              summary="the VLM names phrases in <gsam> tags; Grounding DINO boxes them; SAM draws them (LLaVA-Plus)")
GROUNDED = Design(name="grounded", build=_grounded, accepts=frozenset({"path", "sam", "detector"}),
                  summary="the request is the phrase: Grounding DINO boxes it, SAM draws it (lang-segment-anything)")
