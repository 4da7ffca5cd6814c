"""A tiny SAM 3 of the real transformers classes (``Sam3Model`` + ``Sam3TrackerModel``), with its own
CLIP tokenizer, for tests and for the bundled offline phrase segmenter.

No hub is reachable here, so the tokenizer is made, not downloaded: a CLIP BPE whose base symbols are
the 256 byte characters (so any text tokenizes) with one merge chain per vocabulary word (so the
scene words are single tokens).
"""

from __future__ import annotations

import torch

WORDS = ("the", "all", "every", "each", "visual", "object", "objects", "red", "circle", "star")  # callers pass their own
SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def build_sam3_tokenizer(words=WORDS):
    """A ``CLIPTokenizer`` over byte characters plus whole-word merges for ``words``."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    base = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for symbol in [*base, *(c + "</w>" for c in base)]:
        vocab.setdefault(symbol, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys(w.lower() for w in words):
        left = word[0]
        for i, ch in enumerate(word[1:], start=1):
            right = ch + ("</w>" if i == len(word) - 1 else "")
            merged = left + right
            if merged not in vocab:
                merges.append((left, right))
                vocab[merged] = len(vocab)
            left = merged
    for token in SPECIAL:
        vocab[token] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)


def tiny_sam3_configs(tokenizer, *, image_size: int = 112, patch: int = 14, hidden: int = 32, vit_layers: int = 2,
                      text_layers: int = 2, queries: int = 16, decoder_layers: int = 2):
    """``(Sam3Config, Sam3TrackerConfig)`` that agree: one ViT (so the tracker can share the detector's),
    FPN sizes from ``image_size / patch``, the tokenizer's special ids."""
    from transformers import Sam3Config, Sam3TrackerConfig

    g = image_size // patch
    vit = dict(model_type="sam3_vit_model", hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=vit_layers,
               num_attention_heads=2, image_size=image_size, patch_size=patch, window_size=max(1, g // 2),
               global_attn_indexes=[vit_layers - 1], pretrain_image_size=image_size)
    sizes = [[4 * g] * 2, [2 * g] * 2, [g] * 2]
    small = dict(hidden_size=hidden, num_attention_heads=2, intermediate_size=hidden * 2)
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=text_layers,
                num_attention_heads=2, projection_dim=hidden, max_position_embeddings=32,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    detector = Sam3Config(
        vision_config=dict(backbone_config=vit, fpn_hidden_size=hidden, backbone_feature_sizes=sizes),
        text_config=text, geometry_encoder_config=dict(num_layers=1, **small),
        detr_encoder_config=dict(num_layers=1, **small),
        detr_decoder_config=dict(num_layers=decoder_layers, num_queries=queries, **small),
        mask_decoder_config=dict(hidden_size=hidden, num_attention_heads=2))
    tracker = Sam3TrackerConfig(
        # the default four FPN levels: the tracker's decoder uses the first three (Sam3Backend cuts the fourth)
        vision_config=dict(backbone_config=vit, fpn_hidden_size=hidden, backbone_feature_sizes=sizes),
        prompt_encoder_config=dict(hidden_size=hidden, image_size=image_size, patch_size=patch, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=hidden, mlp_dim=hidden * 2, num_attention_heads=2, iou_head_hidden_dim=hidden))
    return detector, tracker


def spread_queries(model, seed: int = 0) -> None:
    """Queries that start apart, for training from scratch: transformers initialises the decoder's reference
    boxes with N(0, 0.02) logits, i.e. every query at the same centred box (the released weights replace them),
    and its query embeddings nearly equal; from there the queries stay interchangeable and collapse onto one
    answer (run B of the tiny SAM 3, docs/sam.md). Centres uniform over the image, sides 0.1-0.3, N(0, 1) queries."""
    decoder = model.detr_decoder
    n = decoder.reference_points.weight.shape[0]
    g = torch.Generator().manual_seed(seed)
    boxes = torch.cat([torch.rand(n, 2, generator=g) * 0.9 + 0.05, torch.rand(n, 2, generator=g) * 0.2 + 0.1], dim=1)
    with torch.no_grad():
        decoder.reference_points.weight.copy_(torch.logit(boxes))
        decoder.query_embed.weight.copy_(torch.randn(decoder.query_embed.weight.shape, generator=g))


def build_tiny_sam3(seed: int = 0, *, tracker: bool = True, words=WORDS, **sizes):
    """A random tiny :class:`~vlmsam.sam.sam3_backend.Sam3Backend` (tracker sharing the detector's ViT);
    ``words`` become single tokens of its tokenizer."""
    from transformers import Sam3Model, Sam3TrackerModel

    from vlmsam.sam.sam3_backend import Sam3Backend

    tokenizer = build_sam3_tokenizer(words)
    det_cfg, trk_cfg = tiny_sam3_configs(tokenizer, **sizes)
    torch.manual_seed(seed)
    model = Sam3Model(det_cfg)
    spread_queries(model, seed)
    tracker_model = None
    if tracker:
        tracker_model = Sam3TrackerModel(trk_cfg)
        tracker_model.vision_encoder.backbone.load_state_dict(model.vision_encoder.backbone.state_dict())
    return Sam3Backend(model, tokenizer, tracker_model)
