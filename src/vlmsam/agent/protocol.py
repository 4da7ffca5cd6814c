"""What the agent and its VLM say to each other: the system prompts, the tool calls, their checks.

The VLM answers every turn with its reasoning in ``<think>...</think>`` and one tool call as JSON in
``<tool>...</tool>`` (the format of Meta's SAM 3 Agent, so models prompted for it work here)::

    <think>The request asks for the knife; SAM 3 knows "knife".</think>
    <tool>{"name": "segment_phrase", "parameters": {"text_prompt": "knife"}}</tool>

:func:`parse_call` turns a reply into a :class:`ToolCall` or raises :class:`ToolError` with the message
the VLM is sent back (a malformed call is answered, never fatal).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

TOOLS = ("segment_phrase", "examine_each_mask", "select_masks_and_return", "report_no_mask")
MAX_PHRASE_CHARS = 200  # SAM 3 reads 32 tokens; a longer "phrase" is a mistake, not a phrase
MAX_CALL_CHARS = 20_000  # a tool call's JSON; anything longer is not read

SYSTEM_PROMPT = """You find the objects in an image that answer a user's request, using the segmentation tool SAM 3.
SAM 3 takes a short noun phrase (one object class, e.g. "knife", "red circle", "person in a hat") and returns a mask
for every instance of it. It does not understand relations, questions or reasoning: you do that part.

Tools (call exactly one per turn):
- segment_phrase {"text_prompt": "<noun phrase>"}: run SAM 3. Its masks replace the current candidates and come back
  drawn on the image, numbered 1, 2, ... best first. A phrase you already used is refused: choose another.
- examine_each_mask {}: check every current candidate on its own (you get each alone and zoomed, and accept or reject
  it); the accepted ones come back renumbered.
- select_masks_and_return {"final_answer_masks": [<numbers>]}: answer with these candidates (numbers as drawn) and stop.
- report_no_mask {}: nothing in the image answers the request; stop.

The first call is segment_phrase or report_no_mask. Choose the phrase for the thing the request is about, not for things
it only mentions to locate it ("the cup left of the plate": phrase "cup", then choose by position). If no candidate fits,
try a more general or a different phrase. Select every candidate that answers the request and none that does not.

Answer every turn in exactly this format:
<think>your reasoning</think>
<tool>{"name": "<tool name>", "parameters": {...}}</tool>"""

VERDICT_PROMPT = """You check one candidate mask against a user's request. You see the original image, the image with the
candidate drawn on it, and a zoomed view of the candidate (left: the mask, right: the area around its box). Accept the
candidate only if the object it covers is (one of) the object(s) the request asks for: the whole object, not a part of
it, and not an object the request only mentions to locate the target. Answer in exactly this format:
<think>your reasoning</think>
<verdict>Accept</verdict> or <verdict>Reject</verdict>"""

FORMAT_HINT = ('Answer with <think>...</think> then one call such as '
               '<tool>{"name": "segment_phrase", "parameters": {"text_prompt": "cup"}}</tool>.')

_THINK = re.compile(r"<think>(.*?)(?:</think>|<tool>|$)", re.S)
_VERDICT = re.compile(r"<verdict>\s*(accept|reject)\s*</verdict>", re.I)


class ToolError(ValueError):
    """A reply that is not a valid tool call; ``str(error)`` is what the VLM is told."""


@dataclass(frozen=True)
class ToolCall:
    """One parsed call: ``name`` (one of :data:`TOOLS`) and its checked ``parameters``."""

    name: str
    parameters: dict = field(default_factory=dict)

    def as_json(self) -> str:
        return json.dumps({"name": self.name, "parameters": self.parameters}, ensure_ascii=False)


def cut_reply(text: str) -> str:
    """The reply up to and including its first ``</tool>``: what is kept in the history (a model that
    writes on after its call has not seen the tool's outcome yet)."""
    end = text.find("</tool>")
    return text if end < 0 else text[: end + len("</tool>")]


def thinking(text: str) -> str:
    """The reasoning of a reply (inside ``<think>``; the text before ``<tool>`` when the tag is missing)."""
    found = _THINK.search(text)
    body = found.group(1) if found else text.split("<tool>")[0]
    return body.strip()


def parse_call(text: str, *, candidates: int) -> ToolCall:
    """The tool call in ``text`` with its parameters checked against ``candidates`` (the number of masks
    currently shown); any fault is a :class:`ToolError` that says what a valid call looks like."""
    cut = cut_reply(text)
    if "<tool>" not in cut:
        raise ToolError(f"Your reply has no <tool> call. {FORMAT_HINT}")
    body = cut.rsplit("<tool>", 1)[1].removesuffix("</tool>").strip()  # the last <tool> before the first </tool>, as Meta
    if len(body) > MAX_CALL_CHARS:
        raise ToolError(f"The tool call is {len(body):,} characters long; a call is a short JSON object. {FORMAT_HINT}")
    call = _json(body)
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise ToolError(f'The tool call must be a JSON object with a "name". {FORMAT_HINT}')
    name, params = call["name"], call.get("parameters", {})
    if name not in TOOLS:
        raise ToolError(f"There is no tool {name[:60]!r}; the tools are {', '.join(TOOLS)}.")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ToolError(f'"parameters" of {name} must be a JSON object.')
    return ToolCall(name, _check(name, params, candidates))


def _json(body: str):
    """The call's JSON; a stray third closing brace (a common slip, which Meta's parser repairs too) is forgiven."""
    for attempt in (body, body.replace("}}}", "}}")):
        try:
            return json.loads(attempt)
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past Python's limit
            continue
    raise ToolError(f"The text inside <tool> is not valid JSON. {FORMAT_HINT}")


def _check(name: str, params: dict, candidates: int) -> dict:
    if name == "segment_phrase":
        phrase = params.get("text_prompt")
        if not isinstance(phrase, str) or not phrase.strip():
            raise ToolError('segment_phrase needs {"text_prompt": "<a short noun phrase>"}.')
        phrase = " ".join(phrase.split())
        if len(phrase) > MAX_PHRASE_CHARS:
            raise ToolError(f"That phrase has {len(phrase)} characters; SAM 3 takes a short noun phrase "
                            f"(at most {MAX_PHRASE_CHARS}), such as \"red circle\".")
        return {"text_prompt": phrase}
    if name == "select_masks_and_return":
        picked = params.get("final_answer_masks")
        if not isinstance(picked, list) or not picked or any(isinstance(i, bool) or not isinstance(i, int) for i in picked):
            raise ToolError('select_masks_and_return needs {"final_answer_masks": [numbers of masks]}; '
                            "to answer with no mask call report_no_mask.")
        if not candidates:
            raise ToolError("There are no candidate masks to select; call segment_phrase or report_no_mask.")
        wrong = [i for i in picked if not 1 <= i <= candidates]
        if wrong:
            raise ToolError(f"Mask {wrong[0]} does not exist: the candidates are numbered 1 to {candidates}.")
        return {"final_answer_masks": sorted(set(picked))}
    if name == "examine_each_mask" and not candidates:
        raise ToolError("There are no candidate masks to examine; call segment_phrase or report_no_mask.")
    return {}


def parse_verdict(text: str) -> bool | None:
    """``True`` for Accept, ``False`` for Reject, ``None`` when the reply gives neither (or both)."""
    found = {m.lower() for m in _VERDICT.findall(text)}
    return None if len(found) != 1 else found == {"accept"}
