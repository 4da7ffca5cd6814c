"""Any OpenAI-compatible chat endpoint as the VLM (vLLM, SGLang, TGI serve 32B/72B models this way).

``RemoteVlm`` has the runtime's interface that the grounding designs use (``encode_image``,
``model_input_size``, ``chat_many``): the image travels as a base64 PNG data URL, requests go through
the ``openai`` client with a timeout and retries on 5xx, and a server that cannot be reached or answers
nonsense is one :class:`RemoteVlmError` naming the endpoint.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

from PIL import Image

from vlmsam.errors import VlmsamError


class RemoteVlmError(VlmsamError):
    """The VLM endpoint could not be reached or gave no usable answer."""


@dataclass(frozen=True)
class RemoteImage:
    """What a remote VLM needs of an image: its PNG as a data URL and its size ``(width, height)``."""

    data_url: str
    size: tuple[int, int]


class RemoteVlm:
    """A VLM behind ``endpoint`` (e.g. ``http://127.0.0.1:8000/v1``) serving model ``model``.

    ``frame`` gives the resized frame a Qwen2.5-VL server's processor uses (factor, min and max
    pixels), in which that model answers boxes; the defaults are Qwen2.5-VL's own.
    """

    def __init__(self, endpoint: str, model: str, *, api_key: str = "EMPTY", timeout: float = 60.0, max_retries: int = 2,
                 frame: tuple[int, int, int] = (28, 56 * 56, 28 * 28 * 1280)):
        try:
            import openai
        except ImportError:
            raise RemoteVlmError("--vlm-endpoint needs the openai package: pip install openai") from None
        if not endpoint.startswith(("http://", "https://")):
            raise RemoteVlmError(f"--vlm-endpoint {endpoint!r}: expected an http(s) URL such as http://127.0.0.1:8000/v1")
        self.endpoint, self.model, self.frame = endpoint, model, frame
        self.client = openai.OpenAI(base_url=endpoint, api_key=api_key, timeout=timeout, max_retries=max_retries)
        self._openai = openai

    def to(self, device) -> RemoteVlm:
        """The model runs where its server runs: nothing moves."""
        return self

    def encode_image(self, image: Image.Image) -> RemoteImage:
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

    def chat_many(self, prefix: RemoteImage, conversations: list[list[tuple[str, str | None]]], *,
                  max_new_tokens: int = 128, **_) -> list[str]:
        """One answer per conversation (greedy: temperature 0)."""
        out = []
        for turns in conversations:
            try:
                reply = self.client.chat.completions.create(model=self.model, messages=self._messages(prefix, turns),
                                                            max_tokens=max_new_tokens, temperature=0.0)
                text = reply.choices[0].message.content
            except self._openai.APITimeoutError:
                raise RemoteVlmError(f"{self.endpoint}: no answer within {self.client.timeout} s") from None
            except self._openai.APIConnectionError:
                raise RemoteVlmError(f"{self.endpoint}: cannot connect (is the server running?)") from None
            except self._openai.APIStatusError as exc:
                raise RemoteVlmError(f"{self.endpoint}: HTTP {exc.status_code} from the server") from None
            except (AttributeError, IndexError, TypeError, ValueError) as exc:
                raise RemoteVlmError(f"{self.endpoint}: not a chat-completions answer ({type(exc).__name__})") from None
            if not isinstance(text, str):
                raise RemoteVlmError(f"{self.endpoint}: the answer holds no text")
            out.append(text)
        return out
