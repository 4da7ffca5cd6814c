"""A Qwen-VL processor as trl's trainers take one, without torchvision.

trl's GRPOTrainer takes a VLM's processor (a transformers ``ProcessorMixin``): it renders conversations with
the chat template, calls the processor on images and text, and decodes completions. transformers'
``Qwen2_5_VLProcessor`` cannot be built without torchvision (its video processor), so this adapter composes
the same two parts our :class:`~vlmsam.vlm.processor.VlmProcessor` holds, the PIL image processor and the
tokenizer, and does what Qwen2_5_VLProcessor does with them: each ``<|image_pad|>`` becomes as many as the
image has merged patches, and ``mm_token_type_ids`` marks them (M-RoPE positions need it).
"""

from __future__ import annotations

import torch
from transformers import BatchFeature, ProcessorMixin

# The chat template of Qwen2-VL and Qwen2.5-VL (their chat_template.json): the default system turn, images as
# <|vision_start|><|image_pad|><|vision_end|> right before the text.
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IMAGE_PAD = "<|image_pad|>"


class TrlVlmProcessor(ProcessorMixin):
    """``image_processor`` + ``tokenizer`` of a Qwen-VL model behind the ProcessorMixin interface."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template or QWEN_VL_CHAT_TEMPLATE)

    @classmethod
    def of(cls, processor) -> TrlVlmProcessor:
        """From a :class:`~vlmsam.vlm.processor.VlmProcessor` (the same image processor and tokenizer)."""
        return cls(processor.image_processor, processor.tokenizer)

    def __call__(self, images=None, text=None, padding=True, padding_side="left", return_tensors="pt", **kwargs):
        texts = [text] if isinstance(text, str) else list(text or [])
        out = {}
        flat = [im for group in (images or []) for im in (group if isinstance(group, (list, tuple)) else [group])
                if im is not None]
        if flat:
            image_inputs = self.image_processor(images=flat, return_tensors="pt")
            merge = self.image_processor.merge_size ** 2
            counts = iter(int(g.prod()) // merge for g in image_inputs["image_grid_thw"])
            texts = [self._expand(t, counts) for t in texts]
            out.update(image_inputs)
        ids = self.tokenizer(texts, return_tensors="pt", padding=bool(padding) or "longest", padding_side=padding_side)
        out.update(ids)
        pad = self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        out["mm_token_type_ids"] = (ids["input_ids"] == pad).to(torch.int32)
        return BatchFeature(out)

    @staticmethod
    def _expand(text: str, counts) -> str:
        parts = text.split(IMAGE_PAD)
        return parts[0] + "".join(IMAGE_PAD * next(counts) + rest for rest in parts[1:])

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"]
