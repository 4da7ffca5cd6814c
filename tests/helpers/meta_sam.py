"""Meta's ``segment-anything`` as a test-only reference implementation.

The package imports torchvision at import time without declaring it, and torchvision has no CPU
build here. It uses four torchvision functions; stand-ins for them are placed in ``sys.modules``
for the duration of the import only (a lasting fake torchvision would break transformers).
The stand-ins do what torchvision does for the inputs the predictor gives them.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import torch
from PIL import Image


def _resize(image: Image.Image, size):
    # torchvision's resize of a PIL image with a (h, w) size: PIL bilinear.
    h, w = size
    return image.resize((w, h), Image.BILINEAR)


def _to_pil_image(array):
    return Image.fromarray(np.asarray(array))


def _box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _batched_nms(*args, **kwargs):  # only the automatic mask generator uses it
    raise NotImplementedError("batched_nms is not available in the test stand-in")


def import_segment_anything():
    """Import and return the ``segment_anything`` package with torchvision stand-ins."""
    import transformers  # noqa: F401  (import first, so it never sees the stand-in)

    if "segment_anything" in sys.modules:
        return sys.modules["segment_anything"]
    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.ops", "torchvision.ops.boxes"]
    saved = {n: sys.modules.get(n) for n in names}
    fakes = {n: types.ModuleType(n) for n in names}
    fakes["torchvision.transforms.functional"].resize = _resize
    fakes["torchvision.transforms.functional"].to_pil_image = _to_pil_image
    fakes["torchvision.ops.boxes"].batched_nms = _batched_nms
    fakes["torchvision.ops.boxes"].box_area = _box_area
    fakes["torchvision.ops"].boxes = fakes["torchvision.ops.boxes"]
    fakes["torchvision.transforms"].functional = fakes["torchvision.transforms.functional"]
    sys.modules.update(fakes)
    try:
        import segment_anything
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    return segment_anything


def build_tiny_meta_sam(seed: int = 0, embed_dim: int = 32, depth: int = 2, heads: int = 2, global_attn=(1,)):
    """A Meta ``Sam`` with a small image encoder (and the released prompt encoder / decoder), random weights."""
    sa = import_segment_anything()
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(seed)
    model = _build_sam(
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=heads,
        encoder_global_attn_indexes=list(global_attn),
        checkpoint=None,
    )
    _randomize(model, seed)
    return model.eval(), sa


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Meta initialises many tensors to zeros/ones (rel-pos, LayerNorm); give each a distinct value
    so that a wrong rename cannot hide behind two equal tensors."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name or name.endswith("pos_embed") or "norm" in name:
                p.add_(0.02 * torch.randn(p.shape, generator=g))
