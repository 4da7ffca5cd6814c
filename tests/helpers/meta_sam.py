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


def _batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision's batched_nms, written out with numpy: per category, greedy by descending score,
    dropping boxes whose IoU (areas without +1) with a kept one exceeds the threshold."""
    b, s, c = boxes.double().numpy(), scores.double().numpy(), idxs.numpy()
    keep = []
    for cat in np.unique(c):
        ids = np.flatnonzero(c == cat)
        ids = ids[np.argsort(-s[ids], kind="stable")]
        alive = list(ids)
        while alive:
            i = alive.pop(0)
            keep.append(i)
            rest = []
            for j in alive:
                xx1, yy1 = max(b[i, 0], b[j, 0]), max(b[i, 1], b[j, 1])
                xx2, yy2 = min(b[i, 2], b[j, 2]), min(b[i, 3], b[j, 3])
                inter = max(0.0, xx2 - xx1) * max(0.0, yy2 - yy1)
                union = (b[i, 2] - b[i, 0]) * (b[i, 3] - b[i, 1]) + (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1]) - inter
                if inter / union <= iou_threshold:
                    rest.append(j)
            alive = rest
    keep = np.array(sorted(keep, key=lambda i: -s[i]), dtype=np.int64)
    return torch.from_numpy(keep)


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


def build_small_input_meta_sam(seed: int = 0, img_size: int = 256):
    """A Meta ``Sam`` with a ``img_size`` input (16-pixel patches), a tiny image encoder and the released
    prompt encoder / decoder, random weights: Meta's code path at a size a CPU test runs in seconds."""
    from functools import partial

    sa = import_segment_anything()
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    grid = img_size // 16
    model = Sam(
        image_encoder=ImageEncoderViT(depth=2, embed_dim=32, img_size=img_size, mlp_ratio=4,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=2, patch_size=16,
                                      qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1], window_size=4, out_chans=256),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048,
                                                                                      num_heads=8),
                                 transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )
    _randomize(model, seed)
    return model.eval(), sa
