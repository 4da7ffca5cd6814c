"""The ``box_prompt`` design as the registry knows it (entry point ``vlmsam.designs``)."""

from __future__ import annotations

from vlmsam.engine.spec import BuildSpec, Design


def _build(spec: BuildSpec):
    from vlmsam.box_prompt.segmenter import build

    return build(spec)


DESIGN = Design(name="box_prompt", build=_build, accepts=frozenset({"path", "vlm", "sam", "vlm_endpoint", "max_new_tokens"}),
                summary="the VLM answers boxes and points in its grounding format; SAM draws them (Qwen-VL + SAM, Seg-Zero)")
