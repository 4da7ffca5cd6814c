"""A tiny random transformers ``SamModel`` for tests and from-scratch training."""

from __future__ import annotations

import torch
from transformers import SamConfig, SamModel


def tiny_sam_config(image_size: int = 64, patch_size: int = 8, hidden: int = 32, prompt_dim: int = 32, layers: int = 2) -> SamConfig:
    """Sizes that agree: vision output = prompt hidden = decoder hidden = 2 x num_pos_feats, and
    the prompt encoder's grid = image_size / patch_size."""
    return SamConfig(
        vision_config=dict(
            hidden_size=hidden, output_channels=prompt_dim, num_hidden_layers=layers, num_attention_heads=2,
            image_size=image_size, patch_size=patch_size, window_size=4, global_attn_indexes=[layers - 1],
            num_pos_feats=prompt_dim // 2, mlp_dim=hidden * 2,
            initializer_range=0.02,  # the default 1e-10 starts the encoder dead
        ),
        prompt_encoder_config=dict(hidden_size=prompt_dim, image_size=image_size, patch_size=patch_size, mask_input_channels=8),
        mask_decoder_config=dict(hidden_size=prompt_dim, mlp_dim=prompt_dim * 2, num_hidden_layers=2, num_attention_heads=2,
                                 iou_head_hidden_dim=prompt_dim),
    )


def build_tiny_sam(seed: int = 0, **sizes) -> SamModel:
    torch.manual_seed(seed)
    model = SamModel(tiny_sam_config(**sizes))
    with torch.no_grad():  # transformers scales this by hidden/2; Meta's SAM uses N(0, 1)
        model.shared_image_embedding.positional_embedding.normal_(0, 1)
        model.prompt_encoder.shared_embedding.positional_embedding.copy_(model.shared_image_embedding.positional_embedding)
    return model.eval()
