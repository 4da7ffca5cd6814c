"""Turns (image, conversation) into model inputs for the Qwen-VL family, without torchvision.

transformers' ``Qwen2_5_VLProcessor`` needs torchvision (for its video processor); this adapter
composes the PIL image processor and the tokenizer instead, and is the one place where chat
prompts become token ids. Building the ids piece by piece is also what keeps user text as data:
text is tokenized with ``split_special_tokens=True``, so a user who types ``<|image_pad|>``,
``<|im_start|>`` or ``[SEG]`` gets those characters, never the special tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from vlmsam.vlm.messages import Message

SEG_TOKEN = "[SEG]"
DEFAULT_SYSTEM = "You are a helpful assistant."


@dataclass
class EncodedConversation:
    """Token ids of one conversation with labels on the assistant turns.

    Attributes:
        input_ids: ``(L,) long``.
        labels: ``(L,) long``, -100 everywhere except assistant answers and their end token.
        pixel_values: flattened patches ``(P, C*t*p*p)`` for the image, or None.
        image_grid_thw: ``(1, 3) long`` or None.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


class VlmProcessor:
    """Image processor + tokenizer of a Qwen-VL model, with the chat format spelled out."""

    def __init__(self, image_processor, tokenizer, system: str = DEFAULT_SYSTEM):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.system = system
        ids = tokenizer.convert_tokens_to_ids
        self.im_start, self.im_end = ids("<|im_start|>"), ids("<|im_end|>")
        self.vision_start, self.vision_end = ids("<|vision_start|>"), ids("<|vision_end|>")
        self.image_pad = ids("<|image_pad|>")
        unknown = [n for n, i in [("<|im_start|>", self.im_start), ("<|image_pad|>", self.image_pad)] if i is None or i == tokenizer.unk_token_id]
        if unknown:
            raise ValueError(f"the tokenizer lacks the Qwen-VL special tokens {unknown}")

    # ---- loading ----------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> VlmProcessor:
        from transformers import AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        from vlmsam.errors import CheckpointError, first_line

        local = Path(str(path))
        if local.is_dir():  # say exactly what a local directory lacks, before transformers tries the hub
            missing = [name for name, found in (
                ("tokenizer files (tokenizer.json or vocab files)", any((local / f).is_file() for f in
                                                                        ("tokenizer.json", "vocab.json", "tokenizer_config.json"))),
                ("preprocessor_config.json (the image processor)", (local / "preprocessor_config.json").is_file())) if not found]
            if missing:
                raise CheckpointError(f"{local}: not a complete VLM directory: no {' and no '.join(missing)}; save the "
                                      "processor beside the model (processor.save_pretrained) or name the checkpoint "
                                      "directory that holds them")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
            image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(path), **kwargs)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot load the VLM's processor ({first_line(exc)})") from None
        return cls(image_processor, tokenizer)

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(str(path))
        self.image_processor.save_pretrained(str(path))

    # ---- special tokens ---------------------------------------------------------------------------

    def add_seg_token(self) -> int:
        """Add ``[SEG]`` as a special token (hidden by ``skip_special_tokens``); return its id."""
        if SEG_TOKEN not in self.tokenizer.get_vocab():
            self.tokenizer.add_special_tokens({"additional_special_tokens": [SEG_TOKEN]}, replace_extra_special_tokens=False)
        return self.tokenizer.convert_tokens_to_ids(SEG_TOKEN)

    @property
    def seg_token_id(self) -> int | None:
        return self.tokenizer.get_vocab().get(SEG_TOKEN)

    # ---- text and images --------------------------------------------------------------------------

    def text_ids(self, text: str) -> list[int]:
        """Ids of untrusted text: special-token spellings stay plain characters."""
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def answer_ids(self, answer: str) -> list[int]:
        """Ids of an answer we wrote ourselves: ``[SEG]`` becomes the special token, the rest is text."""
        seg = self.seg_token_id
        ids: list[int] = []
        for i, piece in enumerate(answer.split(SEG_TOKEN)):
            if i:
                if seg is None:
                    raise ValueError("the answer holds [SEG] but the tokenizer has no [SEG] token")
                ids.append(seg)
            if piece:
                ids.extend(self.text_ids(piece))
        return ids

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` of an image of this size as the image processor resizes it: the frame in which
        Qwen2.5-VL gives grounding coordinates."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        ip = self.image_processor

        def bound(edge: str, pixels: str, default: int) -> int:
            # ``size`` is a SizeDict (attributes) in transformers 5, a dict before; either way it is what the
            # processor resizes by. Reading only a dict let a SizeDict's bounds fall through to None, and the
            # frame became the image's own size rounded, not the one the model sees (tests/test_vlm_frame.py).
            size = ip.size
            value = size.get(edge) if isinstance(size, dict) else getattr(size, edge, None)
            return value or getattr(ip, pixels, None) or default

        return smart_resize(height, width, factor=ip.patch_size * ip.merge_size,
                            min_pixels=bound("shortest_edge", "min_pixels", 56 * 56),
                            max_pixels=bound("longest_edge", "max_pixels", 14 * 14 * 4 * 1280))

    def image_inputs(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``pixel_values``, ``image_grid_thw (1, 3)`` and the number of image tokens."""
        out = self.image_processor(images=[image], return_tensors="pt")
        grid = out["image_grid_thw"]
        n_tokens = int(grid[0].prod()) // self.image_processor.merge_size**2
        return out["pixel_values"], grid, n_tokens

    def encode(self, turns: list[tuple[str, str]], image: Image.Image | None = None, *,
               image_inputs: tuple[torch.Tensor, torch.Tensor, int] | None = None) -> EncodedConversation:
        """Encode ``turns`` = ``[(user_text, assistant_answer), ...]`` (the last answer may be None).

        The image, if any, goes at the start of the first user turn (``image_inputs`` reuses an
        already processed image). Labels cover each assistant answer and its ``<|im_end|>``. A
        final answer of None ends the sequence with an open assistant turn, ready for ``generate``.
        """
        newline = self.text_ids("\n")
        ids: list[int] = [self.im_start, *self.text_ids("system\n" + self.system), self.im_end, *newline]
        labels: list[int] = [-100] * len(ids)
        pixel_values = grid = None
        if image is not None or image_inputs is not None:
            pixel_values, grid, n_image = image_inputs if image_inputs is not None else self.image_inputs(image)
        for k, (user, answer) in enumerate(turns):
            head = [self.im_start, *self.text_ids("user\n")]
            if k == 0 and grid is not None:
                head += [self.vision_start, *([self.image_pad] * n_image), self.vision_end]
            head += [*self.text_ids(user), self.im_end, *newline, self.im_start, *self.text_ids("assistant\n")]
            ids += head
            labels += [-100] * len(head)
            if answer is None:
                break
            body = [*self.answer_ids(answer), self.im_end]
            ids += body + newline
            labels += body + [-100] * len(newline)
        return EncodedConversation(torch.tensor(ids), torch.tensor(labels), pixel_values, grid)

    def encode_messages(self, messages: list[Message], image_tokens, *, open_answer: bool, image_key=None) -> tuple:
        """``messages`` in the Qwen-VL chat format: ``(ids, keys, labels, spans)``. ``image_tokens(image)`` says
        how many tokens a picture takes; ``keys`` equal ``ids`` except at image tokens, which carry
        ``image_key(image)`` (a number that names the picture for the caller's whole conversation; by default its
        place in this list); ``labels`` are the ids on assistant text and its ``<|im_end|>`` (-100 elsewhere:
        what training learns); ``spans`` holds each picture's ``(first token, image)``. ``open_answer`` ends
        with an open assistant turn (generation); without it the last message ends the sequence (training)."""
        p = self
        newline = p.text_ids("\n")
        if not messages or messages[0].role != "system":
            messages = [Message("system", (p.system,)), *messages]
        ids: list[int] = []
        keys: list[int] = []
        labels: list[int] = []
        spans: list[tuple[int, object]] = []
        slots: dict[int, int] = {}

        def add(piece, key=None, learn=False):
            ids.extend(piece)
            keys.extend(piece if key is None else [key] * len(piece))
            labels.extend(piece if learn else [-100] * len(piece))

        for m in messages:
            add([p.im_start, *p.text_ids(m.role + "\n")])
            learn = m.role == "assistant"
            for part in m.parts:
                if isinstance(part, str):
                    add(p.text_ids(part), learn=learn)  # split_special_tokens: no text becomes a control token
                    continue
                n = image_tokens(part)
                slot = image_key(part) if image_key is not None else slots.setdefault(id(part), len(slots))
                add([p.vision_start])
                spans.append((len(ids), part))
                add([p.image_pad] * n, key=-1 - slot)  # never a real id; another picture, another key
                add([p.vision_end])
            add([p.im_end], learn=learn)
            add(newline)
        if open_answer:
            add([p.im_start, *p.text_ids("assistant\n")])
        return ids, keys, labels, spans

    def mm_token_type_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """1 at image tokens, 0 elsewhere: transformers v5 needs it for 3-D (M-RoPE) positions."""
        return (input_ids == self.image_pad).to(torch.int32)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens).strip()
