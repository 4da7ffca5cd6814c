"""``--segmenter agent``: the loop of :mod:`vlmsam.agent.loop` behind the engine's contract.

``encode`` runs SAM 3's image encoder and the VLM's vision tower once; every request then runs its own
loop on them (a local VLM's conversation reuses its key/value cache from turn to turn). The result's
``info["trace"]`` holds the steps and ``extra_images`` each step's picture (``vlmsam segment`` writes
them as ``{stem}_trace.json`` and ``{stem}_step_<turn>.png``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from vlmsam.agent.loop import AgentLoop
from vlmsam.agent.protocol import SYSTEM_PROMPT
from vlmsam.engine.contract import EncodedImage, SegmenterBase, SegmentOptions, check_fraction
from vlmsam.engine.registry import CONFIG_NAME, bundled_default, part, read_config
from vlmsam.errors import CheckpointError, PromptError
from vlmsam.result import SegmentationResult

DEFAULT_NAME = "agent-tiny"  # the bundled offline default (make agent-model)
DEFAULTS = {"max_turns": 16, "max_new_tokens": 1024, "score_threshold": 0.5}  # a thinking model wants more: 4096


@dataclass(frozen=True)
class AgentOptions(SegmentOptions):
    """The loop's limits for these requests: ``max_turns`` (VLM turns before it gives up) and SAM 3's
    ``score_threshold`` (class x presence); ``max_new_tokens`` bounds each turn's reply."""

    max_turns: int | None = None
    score_threshold: float | None = None

    def check(self) -> None:
        super().check()
        n = self.max_turns
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100):
            raise PromptError(f"option max_turns must be a whole number from 1 to 100, not {n!r}")
        check_fraction("score_threshold", self.score_threshold)


class AgentSegmenter(SegmenterBase):
    """A VLM (local runtime or served) that calls a SAM 3 (``sam``: a Sam3Backend) in a loop."""

    name = "agent"
    options_type = AgentOptions

    def __init__(self, vlm, sam, *, max_turns: int = 16, max_new_tokens: int = 1024, score_threshold: float = 0.5,
                 system_prompt: str = SYSTEM_PROMPT, label: str = ""):
        super().__init__(label)
        if not hasattr(sam, "segment_phrases"):
            raise CheckpointError("the agent's tool is SAM 3's concept head: name a SAM 3 with --sam (e.g. facebook/sam3)")
        self.vlm, self.sam = vlm, sam
        self.max_turns, self.max_new_tokens, self.score_threshold = max_turns, max_new_tokens, score_threshold
        self.system_prompt = system_prompt  # a tiny VLM is taught a short one (its bundle records it)

    @property
    def device(self):
        return self.sam.device

    def to(self, device):
        self.vlm.to(device)
        self.sam.to(device)
        return self

    def _encode(self, image, key: str) -> EncodedImage:
        # the conversation starts from its own system prompt, so the default prefix's cache would go unused
        return self.encode_parts(image, key, sam=self.sam, vlm=self.vlm, extras={"image": image}, vlm_cache=False)

    def _segment(self, encoded: EncodedImage, request: str, options: dict) -> SegmentationResult:
        t0 = time.perf_counter()
        image = encoded.extras["image"]
        loop = AgentLoop(self.vlm.conversation(encoded.vlm, image), self.sam, encoded.sam, image, request,
                         max_turns=options.get("max_turns") or self.max_turns,
                         max_new_tokens=options.get("max_new_tokens") or self.max_new_tokens,
                         score_threshold=self.score_threshold if options.get("score_threshold") is None
                         else options["score_threshold"], system_prompt=self.system_prompt)
        out = loop.run()
        final = out.steps[-1].thinking if out.steps else ""
        info = {"reason": out.reason, "phrases": out.phrases, "turns": out.turns, "malformed_calls": out.malformed,
                "trace": out.trace()}
        timings = {**out.timings, "agent_loop": time.perf_counter() - t0}
        if not len(out.masks):
            return SegmentationResult.empty(encoded.size, text=final, info=info, timings=timings,
                                            extra_images=out.pictures)
        return SegmentationResult(masks=out.masks, boxes=out.boxes, scores=out.scores, labels=out.labels, text=final,
                                  info=info, timings=timings, extra_images=out.pictures)

    def _served(self) -> bool:
        from vlmsam.vlm.remote import RemoteVlm

        return isinstance(self.vlm, RemoteVlm)

    def _config(self) -> dict:  # a served VLM is named, not saved
        vlm = {"vlm": self.vlm.model, "vlm_endpoint": self.vlm.endpoint} if self._served() else {"vlm": "vlm"}
        return {"model_type": "vlmsam_agent", **vlm, "sam": "sam", "max_turns": self.max_turns,
                "max_new_tokens": self.max_new_tokens, "score_threshold": self.score_threshold,
                **({"system_prompt": self.system_prompt} if self.system_prompt != SYSTEM_PROMPT else {})}

    def save_pretrained(self, path: str | Path) -> Path:
        out = Path(path)
        if not self._served():  # a served VLM stays where it is served: the config names it
            self.vlm.save_pretrained(out / "vlm")
        self.sam.save_pretrained(out / "sam")
        (out / CONFIG_NAME).write_text(json.dumps(self._config(), indent=2))
        return out


def build_agent(spec) -> AgentSegmenter:
    """An agent checkpoint (``spec.path``; its config may name a served VLM: ``"vlm_endpoint": URL`` with
    ``"vlm"`` the served model's name), base models (``vlm`` or ``vlm_endpoint`` + ``vlm``, and a SAM 3 as
    ``sam``), or with none named the bundled offline default (``weights/agent-tiny``)."""
    from vlmsam.sam import load_sam_backend
    from vlmsam.vlm.remote import RemoteVlm
    from vlmsam.vlm.runtime import VlmRuntime

    path = spec.path or None
    if path is None and not (spec.vlm or spec.vlm_endpoint or spec.sam):
        path = bundled_default(DEFAULT_NAME, "make agent-model")
    settings = {**DEFAULTS, **(read_config(path) if path is not None else {})}
    vlm = spec.vlm or (part(path, settings, "vlm") if path is not None else None)
    sam = spec.sam or (part(path, settings, "sam") if path is not None else None)
    if not vlm:
        raise CheckpointError("the agent needs a VLM: name one with --vlm (and --vlm-endpoint for a served one)")
    if not sam:
        raise CheckpointError("the agent needs a SAM 3 as its tool: name one with --sam (e.g. facebook/sam3)")
    if (Path(sam) / CONFIG_NAME).is_file():  # a grounded SAM 3 checkpoint (weights/sam3-tiny): its SAM, its threshold
        tool = read_config(sam)
        sam, settings["score_threshold"] = part(sam, tool, "sam"), tool.get("score_threshold", settings["score_threshold"])
    endpoint = spec.vlm_endpoint or (settings.get("vlm_endpoint") if not spec.vlm else None)  # a checkpoint may name a server
    runtime = RemoteVlm(endpoint, vlm) if endpoint else VlmRuntime.load(vlm, dtype=spec.dtype, device=spec.device)
    backend = load_sam_backend(sam, device=spec.device, dtype=spec.dtype)
    return AgentSegmenter(runtime, backend, max_turns=settings["max_turns"],
                          max_new_tokens=spec.max_new_tokens or settings["max_new_tokens"],
                          score_threshold=settings["score_threshold"], system_prompt=settings.get("system_prompt", SYSTEM_PROMPT),
                          label=str(path or f"{endpoint + ' ' if endpoint else ''}{vlm} + {sam}"))
