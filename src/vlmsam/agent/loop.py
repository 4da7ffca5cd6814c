"""The agent loop: a VLM calls SAM 3 with noun phrases, looks at the numbered masks, and chooses.

One :class:`AgentLoop` answers one request about one image. Each turn the VLM sees the pruned history
(:meth:`AgentLoop.visible`), answers one tool call (:mod:`vlmsam.agent.protocol`), and the loop carries
it out: SAM 3 runs on the image's cached embedding, candidates are drawn and numbered for the VLM, a
faulty call is answered with what was wrong. Every turn becomes a :class:`Step` of the trace.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from vlmsam.agent.protocol import SYSTEM_PROMPT, VERDICT_PROMPT, ToolCall, ToolError, cut_reply, parse_call, parse_verdict, thinking
from vlmsam.io.marks import draw_marks, zoom_view
from vlmsam.vlm.messages import Message

MAX_CANDIDATES = 30  # more numbered masks than this are unreadable in one picture
OVERLAP = 0.3  # a mask covered more than this by a better one (intersection over the smaller) is a duplicate


@dataclass
class Step:
    """One turn of the trace: what the VLM said and what came of it (``picture``: the name of the image
    shown to it next, in :attr:`AgentOutcome.pictures`)."""

    turn: int
    reply: str
    thinking: str
    tool: str | None
    parameters: dict
    outcome: str
    candidates: int
    error: bool = False
    picture: str | None = None


@dataclass
class AgentOutcome:
    """What the loop ended with: the chosen ``masks`` (their ``boxes`` and ``scores``), the ``steps``,
    their ``pictures`` (PIL images by name), why it ended (``reason``), the phrases tried, the number of
    VLM turns and of malformed calls, and seconds spent in the VLM and in SAM 3."""

    masks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: list[str]
    steps: list[Step]
    pictures: dict
    reason: str
    phrases: list[str]
    turns: int
    malformed: int
    timings: dict = field(default_factory=dict)

    def trace(self) -> list[dict]:
        return [asdict(s) for s in self.steps]


def dedupe(masks: np.ndarray, scores: np.ndarray, overlap: float = OVERLAP) -> list[int]:
    """Indices of the masks kept, best first: greedily by score, a mask whose intersection with a kept one
    exceeds ``overlap`` of the smaller of the two is dropped (SAM 3 Agent's rule)."""
    kept: list[int] = []
    areas = masks.reshape(len(masks), -1).sum(1)
    rows, cols = masks.any(2), masks.any(1)
    for i in np.argsort(-scores, kind="stable"):
        if areas[i] == 0:
            continue
        # masks whose boxes do not meet cannot overlap: only the others are compared pixel by pixel
        if all(not ((rows[i] & rows[j]).any() and (cols[i] & cols[j]).any())
               or (masks[i] & masks[j]).sum() <= overlap * min(areas[i], areas[j]) for j in kept):
            kept.append(int(i))
            if len(kept) == MAX_CANDIDATES:
                break
    return kept


class AgentLoop:
    """One request's loop. ``talk``: a VLM conversation (``vlm.conversation(...)``); ``sam``: a SAM 3
    backend and ``embedding`` its encoding of ``image``."""

    def __init__(self, talk, sam, embedding, image, request: str, *, max_turns: int = 16, max_new_tokens: int = 512,
                 score_threshold: float = 0.5, system_prompt: str = SYSTEM_PROMPT):
        self.talk, self.sam, self.embedding, self.request = talk, sam, embedding, request
        self.image = image if image.mode == "RGB" else image.convert("RGB")  # the same object the VLM has encoded
        self.max_turns, self.max_new_tokens, self.score_threshold = max_turns, max_new_tokens, score_threshold
        self.messages = [Message("system", (system_prompt,)), Message("user", (image, f'The request: "{request}"'))]
        self.phrases: list[str] = []
        self.last_phrase_at = 0  # index in messages of the latest segment_phrase call
        self.shown_at: int | None = None  # index of the message that shows the current candidates
        self.examined = False  # the current candidates were examined (once per phrase: each costs a VLM call per mask)
        self.masks = np.zeros((0, *image.size[::-1]), bool)
        self.boxes, self.scores = np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        self.steps: list[Step] = []
        self.pictures: dict = {}
        self.malformed = 0
        self.seconds = {"vlm": 0.0, "sam": 0.0}

    # ---- what the VLM sees ------------------------------------------------------------------------

    def visible(self) -> list[Message]:
        """The history the VLM gets: the prompt and the request, then everything from the latest
        segment_phrase call on; phrases tried before it are listed after the request."""
        if self.last_phrase_at <= 2 or len(self.phrases) < 2:
            return list(self.messages)
        earlier = ", ".join(f'"{p}"' for p in self.phrases[:-1])
        head = Message("user", (*self.messages[1].parts, f"\nPhrases already tried (do not repeat them): {earlier}."))
        return [self.messages[0], head, *self.messages[self.last_phrase_at:]]

    def _say(self, *parts) -> None:
        self.messages.append(Message("user", parts))

    def _show(self, text: str, name: str) -> str:
        """Show the current candidates, numbered, with ``text``; returns the picture's name."""
        picture = draw_marks(self.image, self.masks)
        self.pictures[name] = picture
        if self.shown_at is not None:  # one candidates picture in context at a time
            old = self.messages[self.shown_at]
            self.messages[self.shown_at] = Message("user", tuple(p if isinstance(p, str) else "[an earlier picture of candidates]"
                                                                for p in old.parts))
        self.shown_at = len(self.messages)
        self._say(picture, text)
        return name

    # ---- the tools --------------------------------------------------------------------------------

    def segment_phrase(self, phrase: str, name: str) -> tuple[str, str | None]:
        if phrase.lower() in (p.lower() for p in self.phrases):
            self._say(f'You already used the phrase "{phrase}". Choose a different phrase, or select from the current '
                      "candidates, or call report_no_mask.")
            return f'refused: "{phrase}" was used before', None
        self.phrases.append(phrase)
        self.last_phrase_at = len(self.messages) - 1
        t0 = time.perf_counter()
        found = self.sam.segment_phrase(self.embedding, phrase, threshold=self.score_threshold)
        self.seconds["sam"] += time.perf_counter() - t0
        keep = dedupe(found.masks, found.scores) if len(found) else []
        self.masks, self.boxes, self.scores = found.masks[keep], found.boxes[keep], found.scores[keep]
        self.examined = False
        n = len(keep)
        if not n:
            self.shown_at = None
            self._say(f'segment_phrase("{phrase}") found no mask. Try another, more general phrase, or report_no_mask.')
            return "no mask found", None
        text = f'segment_phrase("{phrase}") found {n} mask{"s" if n > 1 else ""}, numbered 1 to {n} above, best first.'

        return f"{n} mask{'s' if n > 1 else ''} found", self._show(text, name)

    def examine_each_mask(self, name: str) -> tuple[str, str | None]:
        self.examined = True
        verdicts = []
        for k, mask in enumerate(self.masks, 1):
            parts = (self.image, f'The request: "{self.request}". The candidate, drawn on the image:',
                     draw_marks(self.image, mask[None], [k]), "The candidate zoomed in:", zoom_view(self.image, mask, k))
            reply = self._ask([Message("system", (VERDICT_PROMPT,)), Message("user", parts)], thread="verdict")
            verdict = parse_verdict(reply)
            self.malformed += verdict is None
            verdicts.append(verdict is not False)  # no verdict: keep the mask; the VLM still chooses after
        keep = [k for k, v in enumerate(verdicts) if v]
        self.masks, self.boxes, self.scores = self.masks[keep], self.boxes[keep], self.scores[keep]
        n = len(keep)
        if not n:
            self.shown_at = None
            self._say("examine_each_mask rejected every candidate. Try another phrase, or call report_no_mask.")
            return f"all {len(verdicts)} rejected", None
        text = f"examine_each_mask kept {n} of {len(verdicts)} masks, renumbered 1 to {n} above."
        return f"kept {n} of {len(verdicts)}", self._show(text, name)

    # ---- the loop ---------------------------------------------------------------------------------

    def _ask(self, messages: list[Message], thread: str = "main") -> str:
        t0 = time.perf_counter()
        reply = self.talk.reply(messages, max_new_tokens=self.max_new_tokens, thread=thread)
        self.seconds["vlm"] += time.perf_counter() - t0
        return reply

    def _act(self, call: ToolCall, turn: int) -> tuple[str, str | None, list[int] | None]:
        """Carry out ``call``: (outcome, picture name, the final choice once the loop is over)."""
        name = f"step_{turn}"
        if call.name == "segment_phrase":
            return (*self.segment_phrase(call.parameters["text_prompt"], name), None)
        if call.name == "examine_each_mask":
            return (*self.examine_each_mask(name), None)
        if call.name == "report_no_mask":
            return "no mask: done", None, []
        chosen = [i - 1 for i in call.parameters["final_answer_masks"]]
        self.pictures[name] = draw_marks(self.image, self.masks[chosen], [i + 1 for i in chosen])
        return f"selected {', '.join(str(i + 1) for i in chosen)}: done", name, chosen

    def run(self) -> AgentOutcome:
        chosen: list[int] | None = None
        reason = f"no final answer within {self.max_turns} VLM turns (the generation limit)"
        for turn in range(1, self.max_turns + 1):
            raw = self._ask(self.visible())
            kept = cut_reply(raw)
            self.messages.append(Message("assistant", (kept,)))
            try:
                call = parse_call(kept, candidates=len(self.masks))
                if not self.phrases and call.name not in ("segment_phrase", "report_no_mask"):
                    raise ToolError("Start with segment_phrase (or report_no_mask if nothing answers the request).")
                if call.name == "examine_each_mask" and self.examined:
                    raise ToolError("These candidates were examined already; select from them, or call segment_phrase.")
            except ToolError as err:
                self.malformed += 1
                self._say(f"Error: {err}")
                self.steps.append(Step(turn, kept, thinking(kept), None, {}, str(err), len(self.masks), error=True))
                continue
            outcome, picture, chosen = self._act(call, turn)
            self.steps.append(Step(turn, kept, thinking(kept), call.name, call.parameters, outcome, len(self.masks),
                                   picture=picture))
            if chosen is not None:
                reason = "selected" if chosen else "reported no mask"
                break
        return self._outcome(chosen or [], reason)

    def _outcome(self, chosen: list[int], reason: str) -> AgentOutcome:
        phrase = self.phrases[-1] if self.phrases else ""
        return AgentOutcome(masks=self.masks[chosen], boxes=self.boxes[chosen], scores=self.scores[chosen],
                            labels=[phrase] * len(chosen), steps=self.steps, pictures=self.pictures, reason=reason,
                            phrases=list(self.phrases), turns=len(self.steps), malformed=self.malformed,
                            timings={f"{k}_seconds": round(v, 4) for k, v in self.seconds.items()})
