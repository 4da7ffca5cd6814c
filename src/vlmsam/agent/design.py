"""The ``agent`` design as the registry knows it (entry point ``vlmsam.designs``)."""

from __future__ import annotations

from vlmsam.engine.spec import BuildSpec, Design


def _agent(spec: BuildSpec):
    from vlmsam.agent.segmenter import build_agent

    return build_agent(spec)


DESIGN = Design(name="agent", build=_agent, accepts=frozenset({"path", "vlm", "sam", "vlm_endpoint", "max_new_tokens"}),
                summary="a VLM calls SAM 3 with noun phrases, looks at the numbered masks and chooses (SAM 3 Agent)")
