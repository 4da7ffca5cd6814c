"""A conversation with images anywhere in it, for designs that talk with the VLM over several turns.

A :class:`Message` is a role and its parts, each text or a PIL image. A design builds the list; a
*conversation* (``vlm.conversation(prefix)``: :class:`vlmsam.vlm.conversation.LocalConversation` for a
loaded model, :class:`vlmsam.vlm.remote.RemoteConversation` for a served one) answers it::

    talk = vlm.conversation(prefix, image)          # the image already encoded as ``prefix``
    text = talk.reply([Message("system", ("You segment things.",)),
                       Message("user", (image, "Which shape is red?"))], max_new_tokens=256)

A conversation lives for one task (an agent loop): it keeps what it computed for the images and the
turns so far, so the next call with a longer (or pruned) list recomputes only what changed.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One chat message: ``role`` (system / user / assistant) and ``parts``, each a ``str`` or a PIL image."""

    role: str
    parts: tuple

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"a message's role is one of {ROLES}, not {self.role!r}")
        if isinstance(self.parts, str):
            object.__setattr__(self, "parts", (self.parts,))
        else:
            object.__setattr__(self, "parts", tuple(self.parts))

    @property
    def text(self) -> str:
        """Its text parts, joined."""
        return "".join(p for p in self.parts if isinstance(p, str))

    @property
    def images(self) -> list:
        return [p for p in self.parts if not isinstance(p, str)]
