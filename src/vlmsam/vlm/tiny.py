"""Tiny random Qwen-VL models of the real transformers classes, with their own tokenizer.

No model hub is reachable from our machines, so tests (and the bundled default model) build
their VLM here: a byte-level BPE trained on a small corpus, the Qwen chat special tokens, and a
config whose special-token ids match that tokenizer.
"""

from __future__ import annotations

from pathlib import Path

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
DEFAULT_CORPUS = (
    "You are a helpful assistant. system user assistant Sure, it is the segmentation result. "
    "Can you segment the red circle in this image? Please output segmentation mask. What is the "
    "largest blue square left of the green triangle? There is no such object. They are , and ."
)


def build_tokenizer(corpus: str = DEFAULT_CORPUS, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator([corpus], trainer=trainer)
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    return tokenizer


def tiny_config(family: str, tokenizer, *, text_hidden: int = 64, text_layers: int = 2, vision_hidden: int = 32,
                vision_depth: int = 2):
    """A small config of ``family`` whose special-token ids are ``tokenizer``'s."""
    ids = tokenizer.convert_tokens_to_ids
    tokens = dict(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    heads = 4
    head_dim = text_hidden // heads
    mrope = [head_dim // 2 - 2 * (head_dim // 2 * 3 // 8), head_dim // 2 * 3 // 8, head_dim // 2 * 3 // 8]
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=text_hidden * 2,
        num_hidden_layers=text_layers,
        num_attention_heads=heads,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
        bos_token_id=None,
    )
    if family == "qwen3_vl":
        from transformers import Qwen3VLConfig

        text.update(head_dim=head_dim, rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope, "mrope_interleaved": True})
        vision = dict(depth=vision_depth, hidden_size=vision_hidden, intermediate_size=vision_hidden * 2, num_heads=2,
                      out_hidden_size=text_hidden, patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[0])
        return Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)
    text.update(rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope})
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        vision = dict(depth=vision_depth, hidden_size=vision_hidden, intermediate_size=vision_hidden * 2, num_heads=2,
                      out_hidden_size=text_hidden, window_size=56, fullatt_block_indexes=[vision_depth - 1])
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig

        vision = dict(depth=vision_depth, embed_dim=vision_hidden, hidden_size=text_hidden, num_heads=2, mlp_ratio=2)
        return Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
    raise ValueError(f"unknown VLM family {family!r}; expected one of {FAMILIES}")


def build_tiny_vlm(family: str = "qwen2_5_vl", *, image_pixels: int = 56 * 56, seed: int = 0, **sizes):
    """``(model, VlmProcessor)`` for a tiny random ``family`` model; images are resized to about
    ``image_pixels`` pixels (56² = 4 image tokens for 14-pixel patches merged 2x2)."""
    import torch
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vlmsam.vlm.processor import VlmProcessor

    tokenizer = build_tokenizer()
    config = tiny_config(family, tokenizer, **sizes)
    torch.manual_seed(seed)
    cls = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
           "qwen3_vl": "Qwen3VLForConditionalGeneration"}[family]
    model = getattr(transformers, cls)(config).eval()
    patch = 16 if family == "qwen3_vl" else 14
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch, merge_size=2, temporal_patch_size=2,
        size={"shortest_edge": image_pixels, "longest_edge": image_pixels},
    )
    return model, VlmProcessor(image_processor, tokenizer)


def save_tiny_vlm(out_dir: str | Path, family: str = "qwen2_5_vl", **kwargs) -> Path:
    model, processor = build_tiny_vlm(family, **kwargs)
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
