"""The VLM every design shares: loading, one image prefix per image, batched chat generation.

>>> vlm = VlmRuntime.load("Qwen/Qwen2.5-VL-7B-Instruct", dtype="bf16", device="auto")
>>> prefix = vlm.encode_image(image)                     # vision features + the prefix's KV cache
>>> vlm.chat(prefix, "What is in this image?")           # plain text answer
>>> vlm.chat(prefix, "Frame the aeroplane.", history=[("What is this?", "An airport.")])
>>> vlm.model_input_size(prefix)                         # (width, height) the processor resized to

Qwen2-VL, Qwen2.5-VL and Qwen3-VL load by hub id or path, in bf16 / fp16 / fp32, on a device
(``auto`` = CUDA where available), with SDPA attention (flash-attention 2 where it is installed and
asked for) and, for models larger than one GPU, an accelerate ``device_map``. Loading in bf16
builds the model on the meta device and reads the weights straight into bf16: no fp32 copy is made
(``benchmarks/bench_load.py`` measures the peak).
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from vlmsam.devices import resolve_device, resolve_dtype
from vlmsam.errors import first_line, CheckpointError
from vlmsam.vlm.generation import Generated, VisionPrefix, encode_prefix, generate_many
from vlmsam.vlm.processor import VlmProcessor
from vlmsam.vlm.special_tokens import escape_turns

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def load_vlm_model(source: str, *, dtype=None, device=None, attn_implementation: str | None = None, device_map=None):
    """A transformers Qwen-VL model from a hub id or directory (see the module docstring)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vlmsam.hub import check_available

    check_available(source, "VLM")
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{source}: could not read a VLM config ({first_line(e)})") from None
    if config.model_type not in FAMILIES:
        raise CheckpointError(f"{source}: is a '{config.model_type}' model; supported are Qwen2-VL, Qwen2.5-VL and Qwen3-VL")
    kwargs = {}
    if dtype is not None:
        kwargs["dtype"] = resolve_dtype(dtype)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:  # a truncated or missing weights file, among others
        raise CheckpointError(f"{source}: cannot load the VLM's weights ({first_line(exc)})") from None
    device = resolve_device(device)
    if device is not None and device_map is None:
        model.to(device)
    return model


def set_gradient_checkpointing(vlm, enabled: bool) -> None:
    """Recompute activations in backward (transformers >= 5.2 calls it activation checkpointing)."""
    base = vlm.get_base_model() if hasattr(vlm, "get_base_model") else vlm
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs) if enabled else base.activation_checkpointing_disable()
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs) if enabled else base.gradient_checkpointing_disable()


class VlmRuntime:
    """A loaded VLM and its processor. Holds no per-image state: pass the :class:`VisionPrefix`."""

    def __init__(self, model, processor: VlmProcessor):
        self.model = model
        self.processor = processor
        self._tokenizer_lock = threading.Lock()  # the fast tokenizer refuses concurrent use

    @classmethod
    def load(cls, name_or_path: str | Path, **kwargs) -> VlmRuntime:
        model = load_vlm_model(str(name_or_path), **kwargs)
        return cls(model, VlmProcessor.from_pretrained(str(name_or_path)))

    @property
    def base(self):
        """The transformers model under any peft wrapper."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> VlmRuntime:
        self.model.to(device)
        return self

    @torch.inference_mode()
    def encode_image(self, image, *, cache: bool = True) -> VisionPrefix:
        """Vision features and (``cache``) the key/value cache of everything before the first request's words."""
        with self._tokenizer_lock:
            return encode_prefix(self.base, self.processor, image, self.device, cache=cache)

    def model_input_size(self, prefix: VisionPrefix) -> tuple[int, int]:
        """``(width, height)`` of the image as the processor resized it (Qwen2.5-VL's grounding frame)."""
        _, h, w = (int(v) for v in prefix.grid[0])
        patch = self.processor.image_processor.patch_size
        return w * patch, h * patch

    def prompt_ids(self, prefix: VisionPrefix, turns: list[tuple[str, str | None]]) -> torch.Tensor:
        """Token ids of a conversation about the image whose last answer is left open. Every turn is
        user text here (the request in a design's template, earlier exchanges): special-token spellings
        in it are escaped (:mod:`vlmsam.vlm.special_tokens`)."""
        with self._tokenizer_lock:
            turns = escape_turns(turns, self.processor.tokenizer)
            return self.processor.encode(turns, image_inputs=(prefix.pixel_values, prefix.grid, prefix.n_tokens)).input_ids

    @torch.inference_mode()
    def generate(self, prefix: VisionPrefix, conversations: list[list[tuple[str, str | None]]], *, max_new_tokens: int = 128,
                 state_token: int | None = None, logits_processor=None) -> list[Generated]:
        """Greedy answers to several conversations about one image, in one batch on its prefix."""
        ids = [self.prompt_ids(prefix, turns) for turns in conversations]
        return generate_many(self.base, prefix, ids, stop_id=self.processor.im_end,
                             pad_id=self.processor.tokenizer.pad_token_id or 0, state_token=state_token,
                             max_new_tokens=max_new_tokens, logits_processor=logits_processor)

    def conversation(self, prefix: VisionPrefix | None = None, image=None, *, reuse: bool = True):
        """A multi-turn, multi-image conversation (:mod:`vlmsam.vlm.conversation`) that reuses ``prefix``'s
        features for ``image`` and each turn's key/value cache in the next."""
        from vlmsam.vlm.conversation import LocalConversation

        return LocalConversation(self, prefix, image, reuse=reuse)

    def save_pretrained(self, path: str | Path) -> None:
        """An ordinary transformers directory: the model (LoRA as it is) and its processor beside it."""
        self.base.save_pretrained(path)
        self.processor.save_pretrained(path)

    def decode(self, tokens, skip_special_tokens: bool = True) -> str:
        with self._tokenizer_lock:
            return self.processor.decode(tokens, skip_special_tokens=skip_special_tokens)

    def chat_many(self, prefix: VisionPrefix, conversations: list[list[tuple[str, str | None]]], *,
                  max_new_tokens: int = 128, logits_processor=None) -> list[str]:
        """The text answers to several conversations about one image (one batch)."""
        answers = self.generate(prefix, conversations, max_new_tokens=max_new_tokens, logits_processor=logits_processor)
        return [self.decode(a.tokens) for a in answers]

    def chat(self, prefix: VisionPrefix, request: str, *, history: list[tuple[str, str]] = (), max_new_tokens: int = 128,
             skip_special_tokens: bool = True, logits_processor=None) -> str:
        """The answer to ``request``, with earlier ``(user, answer)`` turns in context."""
        (answer,) = self.generate(prefix, [[*history, (request, None)]], max_new_tokens=max_new_tokens,
                                  logits_processor=logits_processor)
        return self.decode(answer.tokens, skip_special_tokens=skip_special_tokens)
