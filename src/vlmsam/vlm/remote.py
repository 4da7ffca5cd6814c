"""Any OpenAI-compatible chat endpoint as the VLM (vLLM, SGLang, TGI serve 32B/72B models this way).

``RemoteVlm`` has the runtime's interface that the grounding designs use (``encode_image``,
``model_input_size``, ``chat_many``): the image travels as a base64 PNG data URL, requests go through
the ``openai`` client with a timeout and retries on 5xx, and a server that cannot be reached or answers
nonsense is one :class:`RemoteVlmError` naming the endpoint. A hosted endpoint's key comes from
``VLMSAM_VLM_API_KEY`` (sent to whichever endpoint is used, one a checkpoint names included);
``VLMSAM_VLM_TIMEOUT`` sets the seconds one try may take (default 300: a 72B or a thinking model writing
thousands of tokens takes minutes); a request is tried 1 + ``max_retries`` times.
"""

from __future__ import annotations

import base64
import io
import math
import os
from dataclasses import dataclass

from PIL import Image

from vlmsam.errors import VlmsamError


class RemoteVlmError(VlmsamError):
    """The VLM endpoint could not be reached or gave no usable answer."""

    http_status = 502  # `vlmsam serve` behind a dead VLM: a bad gateway, not a bad request


@dataclass(frozen=True)
class RemoteImage:
    """What a remote VLM needs of an image: its PNG as a data URL and its size ``(width, height)``."""

    data_url: str
    size: tuple[int, int]


def _timeout() -> float:
    text = os.environ.get("VLMSAM_VLM_TIMEOUT") or "300"
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise RemoteVlmError(f"VLMSAM_VLM_TIMEOUT={text!r}: expected a number of seconds above 0, e.g. 600")
    return seconds


class RemoteVlm:
    """A VLM behind ``endpoint`` (e.g. ``http://127.0.0.1:8000/v1``) serving model ``model``.

    ``frame`` gives the resized frame a Qwen2.5-VL server's processor uses (factor, min and max
    pixels), in which that model answers boxes; the defaults are Qwen2.5-VL's own.
    """

    def __init__(self, endpoint: str, model: str, *, api_key: str | None = None, timeout: float | None = None, max_retries: int = 2,
                 frame: tuple[int, int, int] = (28, 56 * 56, 28 * 28 * 1280)):
        try:
            import openai
        except ImportError:
            raise RemoteVlmError("--vlm-endpoint needs the openai package: pip install openai") from None
        if not endpoint.startswith(("http://", "https://")):
            raise RemoteVlmError(f"--vlm-endpoint {endpoint!r}: expected an http(s) URL such as http://127.0.0.1:8000/v1")
        self.endpoint, self.model, self.frame = endpoint, model, frame
        api_key = api_key or os.environ.get("VLMSAM_VLM_API_KEY") or "EMPTY"  # never another service's key
        timeout = _timeout() if timeout is None else timeout
        self.client = openai.OpenAI(base_url=endpoint, api_key=api_key, timeout=timeout, max_retries=max_retries)
        self._openai = openai

    def to(self, device) -> RemoteVlm:
        """The model runs where its server runs: nothing moves."""
        return self

    def encode_image(self, image: Image.Image, *, cache: bool = True) -> RemoteImage:  # it travels whole: no cache to make
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return RemoteImage("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(), image.size)

    def model_input_size(self, prefix: RemoteImage) -> tuple[int, int]:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        factor, low, high = self.frame
        h, w = smart_resize(prefix.size[1], prefix.size[0], factor=factor, min_pixels=low, max_pixels=high)
        return w, h

    def _messages(self, prefix: RemoteImage, turns: list[tuple[str, str | None]]) -> list[dict]:
        """The chat messages of ``turns``; the server's chat template parses special tokens in text, so
        the Qwen-VL family's spellings in user text are escaped here (:mod:`vlmsam.vlm.special_tokens`)."""
        from vlmsam.vlm.special_tokens import escape_turns

        messages = []
        for k, (user, answer) in enumerate(escape_turns(turns)):
            content = [{"type": "text", "text": user}]
            if k == 0:
                content.insert(0, {"type": "image_url", "image_url": {"url": prefix.data_url}})
            messages.append({"role": "user", "content": content})
            if answer is not None:
                messages.append({"role": "assistant", "content": answer})
        return messages

    def save_pretrained(self, path) -> None:
        from vlmsam.errors import CheckpointError

        raise CheckpointError(f"{self.endpoint}: a remote VLM has no weights to save")

    def conversation(self, prefix: RemoteImage | None = None, image: Image.Image | None = None, **_) -> RemoteConversation:
        """A multi-turn, multi-image conversation; ``image`` travels as ``prefix``'s data URL (made once)."""
        return RemoteConversation(self, prefix, image)

    def complete(self, messages: list[dict], max_new_tokens: int, *, allow_empty: bool = False) -> str:
        """The server's greedy answer to OpenAI-format ``messages``; any failure is one RemoteVlmError.
        ``allow_empty``: an answer without text (a thinking model cut off at the limit) is ``""``."""
        try:
            reply = self.client.chat.completions.create(model=self.model, messages=messages, max_tokens=max_new_tokens,
                                                        temperature=0.0)
            text = reply.choices[0].message.content
        except self._openai.APITimeoutError:
            tries = 1 + self.client.max_retries
            raise RemoteVlmError(f"{self.endpoint}: no answer within {self.client.timeout} s "
                                 f"({tries} tr{'ies' if tries > 1 else 'y'}; VLMSAM_VLM_TIMEOUT sets it)") from None
        except self._openai.APIConnectionError:
            raise RemoteVlmError(f"{self.endpoint}: cannot connect (is the server running?)") from None
        except self._openai.APIStatusError as exc:
            hint = " (set VLMSAM_VLM_API_KEY to the endpoint's key)" if exc.status_code in (401, 403) else ""
            raise RemoteVlmError(f"{self.endpoint}: HTTP {exc.status_code} from the server{hint}") from None
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            raise RemoteVlmError(f"{self.endpoint}: not a chat-completions answer ({type(exc).__name__})") from None
        if text is None and allow_empty:
            return ""
        if not isinstance(text, str):
            raise RemoteVlmError(f"{self.endpoint}: the answer holds no text")
        return text

    def chat_many(self, prefix: RemoteImage, conversations: list[list[tuple[str, str | None]]], *,
                  max_new_tokens: int = 128, **_) -> list[str]:
        """One answer per conversation (greedy: temperature 0)."""
        return [self.complete(self._messages(prefix, turns), max_new_tokens) for turns in conversations]


class RemoteConversation:
    """:class:`~vlmsam.vlm.messages.Message` lists to a served VLM. Each picture becomes a PNG data URL once
    per conversation; user and assistant text has the Qwen-VL control-token spellings escaped (the
    server's chat template would parse them)."""

    def __init__(self, vlm: RemoteVlm, prefix: RemoteImage | None = None, image: Image.Image | None = None):
        self.vlm = vlm
        self._urls: dict[int, tuple] = {}
        if prefix is not None and image is not None:
            self._urls[id(image)] = (image, prefix.data_url)

    def _url(self, image: Image.Image) -> str:
        found = self._urls.get(id(image))
        if found is None or found[0] is not image:
            found = (image, self.vlm.encode_image(image).data_url)
            self._urls[id(image)] = found
        return found[1]

    def openai_messages(self, messages) -> list[dict]:
        from vlmsam.vlm.special_tokens import escape_special_tokens, special_strings

        strings = special_strings()
        out = []
        for m in messages:
            if m.role != "user" and not m.images:
                text = m.text if m.role == "system" else escape_special_tokens(m.text, strings=strings)
                out.append({"role": m.role, "content": text})
                continue
            content = [{"type": "text", "text": escape_special_tokens(p, strings=strings)} if isinstance(p, str)
                       else {"type": "image_url", "image_url": {"url": self._url(p)}} for p in m.parts]
            out.append({"role": m.role, "content": content})
        return out

    def reply(self, messages, *, max_new_tokens: int = 256, thread: str = "main") -> str:
        """The server's answer to ``messages`` (``thread`` is for the local conversation's caches)."""
        return self.vlm.complete(self.openai_messages(messages), max_new_tokens, allow_empty=True)  # a turn to answer
