"""SAM's preprocessing, the one copy: longest side to the model's input size, mean/std normalisation,
right/bottom padding (transformers' ``SamImageProcessorPil``, which resizes exactly as Meta's
``segment-anything`` does and needs no torchvision). The backend, the checkpoint converter and the
training collator all use it.
"""

from __future__ import annotations

import torch
from PIL import Image
from transformers import SamConfig
from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

# SAM's pixel statistics in 0-255 units (as Meta writes them) and as fractions of 255.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def build_image_processor(config: SamConfig) -> SamImageProcessorPil:
    """The SAM preprocessing for a model of this config (input size from its vision config)."""
    size = config.vision_config.image_size
    low = config.prompt_encoder_config.image_embedding_size * 4
    return SamImageProcessorPil(
        size={"longest_edge": size},
        pad_size={"height": size, "width": size},
        mask_size={"longest_edge": low},
        mask_pad_size={"height": low, "width": low},
        image_mean=[m / 255.0 for m in PIXEL_MEAN],
        image_std=[s / 255.0 for s in PIXEL_STD],
    )


def sam_pixels(processor: SamImageProcessorPil, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """``(1, 3, S, S)`` normalised, padded pixels; original ``(H, W)``; resized ``(h, w)``.

    The one SAM preprocessing: the backend and the training collator both call it."""
    batch = processor(images=image, return_tensors="pt")
    original = tuple(int(v) for v in batch["original_sizes"][0])
    resized = tuple(int(v) for v in batch["reshaped_input_sizes"][0])
    return batch["pixel_values"], original, resized
