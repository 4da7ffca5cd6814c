"""SAM's mask decoder for many prompts on one image, computing what transformers' ``SamMaskDecoder``
computes (its own weights, in its own order of layers) with less arithmetic.

The automatic mask generator decodes ~1,000 single-point prompts per image. Run as a batch, the stock
decoder copies the image embedding once per prompt and projects all 4,096 image positions through
every attention's key / value / query / output layer for every prompt: ~1.3 GFLOP of projections per
prompt at ViT-B sizes, more than the output upscaling. Two exact rewrites remove most of it:

* In the first block the image is still the same for every prompt, so the image-side projections of
  its two cross-attentions (keys and values of token->image, queries of image->token) are computed
  once for the batch.
* After that the image differs per prompt, but an attention between the few tokens (T ~ 7) and the
  image only needs the image through products with T vectors per head, so the projection can move to
  the token side: ``q . (Wk x + bk) = (Wk^T q) . x + q . bk``, ``sum_p a_p (Wv x_p + bv) =
  Wv (sum_p a_p x_p) + bv``, and for image->token the output projection ``Wo`` is applied to the T
  values before they are mixed. Per head that is H x T products with the 256-wide image instead of a
  256 -> 128 projection of every image position.

Only the order of floating-point operations changes (results agree with the stock decoder to ~1e-5;
``tests/test_amg.py`` checks masks against Meta's generator). Nothing is trained through it: training
uses the stock module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(..., L, D)`` -> ``(..., heads, L, D / heads)``."""
    *lead, length, dim = x.shape
    return x.reshape(*lead, length, heads, dim // heads).transpose(-3, -2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """``(..., heads, L, d)`` -> ``(..., L, heads * d)``."""
    *lead, heads, length, d = x.shape
    return x.transpose(-3, -2).reshape(*lead, length, heads * d)


def _softmax(scores: torch.Tensor, dtype) -> torch.Tensor:
    return F.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)


def _attend_tokens(attn: nn.Module, q: torch.Tensor, image_keys: torch.Tensor, image_values: torch.Tensor) -> torch.Tensor:
    """Tokens ``q (n, T, C)`` (already with their positional embedding) attending to a per-prompt image:
    keys ``(n, P, C)`` (image + its positional embedding), values ``(n, P, C)``. Returns ``(n, T, C)``.
    Heads and tokens share one batched-matmul row axis (``h * T``), so no image tensor is broadcast."""
    h = attn.num_attention_heads
    n, t, _ = q.shape
    query = _heads(attn.q_proj(q), h)  # (n, h, T, d)
    wk = attn.k_proj.weight.reshape(h, -1, attn.k_proj.weight.shape[-1])  # (h, d, C)
    folded = torch.einsum("nhtd,hdc->nhtc", query, wk).reshape(n, h * t, -1)  # keys' projection moved to the queries
    bias = (query * attn.k_proj.bias.reshape(1, h, 1, -1)).sum(-1).reshape(n, h * t, 1)
    weights = _softmax(torch.baddbmm(bias, folded, image_keys.transpose(1, 2)) * attn.scaling, q.dtype)  # (n, hT, P)
    mixed = torch.bmm(weights, image_values).reshape(n, h, t, -1)  # the image mixed before its value projection
    wv = attn.v_proj.weight.reshape(h, -1, attn.v_proj.weight.shape[-1])  # (h, d, C)
    values = torch.einsum("nhtc,hdc->nhtd", mixed, wv) + attn.v_proj.bias.reshape(1, h, 1, -1)
    return attn.out_proj(_merge(values))


def _attend_tokens_shared(attn: nn.Module, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """As :func:`_attend_tokens` for an image shared by every prompt: ``keys``/``values`` are its
    projected ``(h, P, d)`` heads, computed once."""
    h = attn.num_attention_heads
    n, t, _ = q.shape
    query = _heads(attn.q_proj(q), h).transpose(0, 1).reshape(h, n * t, -1)  # (h, nT, d)
    weights = _softmax(torch.bmm(query, keys.transpose(1, 2)) * attn.scaling, q.dtype)  # (h, nT, P)
    out = torch.bmm(weights, values).reshape(h, n, t, -1).transpose(0, 1)  # (n, h, T, d)
    return attn.out_proj(_merge(out))


def _attend_image(attn: nn.Module, image_queries: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor,
                  projected: torch.Tensor | None = None) -> torch.Tensor:
    """The image ``image_queries (n, P, C)`` (with its positional embedding) attending to the tokens:
    keys ``k (n, T, C)`` (with their positional embedding), values ``v (n, T, C)``. Returns ``(n, P, C)``.
    ``projected``: the image queries' ``(h, P, d)`` heads instead, when the image is shared."""
    h = attn.num_attention_heads
    n, t, _ = k.shape
    key = _heads(attn.k_proj(k), h)  # (n, h, T, d)
    if projected is not None:
        scores = torch.bmm(projected, key.permute(1, 3, 0, 2).reshape(h, -1, n * t))  # (h, P, nT)
        scores = scores.reshape(h, -1, n, t).permute(2, 1, 0, 3)  # (n, P, h, T)
    else:
        wq = attn.q_proj.weight.reshape(h, -1, attn.q_proj.weight.shape[-1])  # (h, d, C)
        folded = torch.einsum("nhtd,hdc->nhtc", key, wq).reshape(n, h * t, -1)  # queries' projection moved to the keys
        bias = (key * attn.q_proj.bias.reshape(1, h, 1, -1)).sum(-1).reshape(n, 1, h * t)
        scores = torch.baddbmm(bias, image_queries, folded.transpose(1, 2)).reshape(n, -1, h, t)  # (n, P, h, T)
    weights = _softmax(scores * attn.scaling, k.dtype).reshape(n, -1, h * t)
    value = _heads(attn.v_proj(v), h)  # (n, h, T, d)
    wo = attn.out_proj.weight.reshape(-1, h, value.shape[-1])  # (C, h, d)
    out_values = torch.einsum("nhtd,chd->nhtc", value, wo).reshape(n, h * t, -1)  # output projection on the T values
    return torch.baddbmm(attn.out_proj.bias.expand(n, 1, -1), weights, out_values)


@torch.no_grad()
def decode_many(decoder: nn.Module, image: torch.Tensor, image_pe: torch.Tensor, dense: torch.Tensor,
                sparse: torch.Tensor, multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``SamMaskDecoder.forward`` for ``n`` prompts on one image.

    Args:
        decoder: transformers' ``SamMaskDecoder`` (its weights are used as they are).
        image: ``(1, C, g, g)`` image embedding; ``image_pe``: ``(1, C, g, g)``; ``dense``: ``(1, C, g, g)``
            dense prompt embedding (SAM's no-mask embedding), shared by all prompts.
        sparse: ``(n, k, C)`` sparse prompt embeddings.

    Returns:
        low-res mask logits ``(n, M, 4g, 4g)`` and predicted IoU ``(n, M)``, as the stock decoder's.
    """
    n, _, channels = sparse.shape
    height, width = image.shape[-2:]
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], 0).to(sparse.dtype)
    point = torch.cat([tokens.expand(n, -1, -1), sparse], 1)  # (n, T, C)
    x0 = (image + dense).flatten(2).transpose(1, 2)[0]  # (P, C), the same for every prompt
    pe = image_pe.flatten(2).transpose(1, 2)[0]  # (P, C)
    transformer = decoder.transformer
    queries, keys = point, None  # keys: the per-prompt image, once it differs
    for i, layer in enumerate(transformer.layers):
        # self-attention of the tokens
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(query=queries[:, None], key=queries[:, None], value=queries[:, None])[0][:, 0]
        else:
            q = queries + point
            queries = queries + layer.self_attn(query=q[:, None], key=q[:, None], value=queries[:, None])[0][:, 0]
        queries = layer.layer_norm1(queries)
        # tokens -> image
        attn = layer.cross_attn_token_to_image
        if keys is None:
            h = attn.num_attention_heads
            shared_k = _heads(attn.k_proj(x0 + pe), h)  # (h, P, d), once for all prompts
            shared_v = _heads(attn.v_proj(x0), h)
            queries = queries + _attend_tokens_shared(attn, queries + point, shared_k, shared_v)
        else:
            keys_pe = keys + pe  # the image with its positional embedding, for both cross-attentions
            queries = queries + _attend_tokens(attn, queries + point, keys_pe, keys)
        queries = layer.layer_norm2(queries)
        queries = layer.layer_norm3(queries + layer.mlp(queries))
        # image -> tokens
        attn = layer.cross_attn_image_to_token
        if keys is None:
            projected = _heads(attn.q_proj(x0 + pe), attn.num_attention_heads)  # (h, P, d), once
            out = _attend_image(attn, None, queries + point, queries, projected=projected)
            keys = layer.layer_norm4(x0[None] + out)
        else:
            out = _attend_image(attn, keys_pe, queries + point, queries)
            del keys_pe
            keys = layer.layer_norm4(keys.add_(out))
    queries = transformer.layer_norm_final_attn(
        queries + _attend_tokens(transformer.final_attn_token_to_image, queries + point, keys + pe, keys))

    iou_token_out = queries[:, 0]
    mask_tokens_out = queries[:, 1:1 + decoder.num_mask_tokens]
    grid = keys.transpose(1, 2).reshape(n, channels, height, width)
    up = decoder.activation(decoder.upscale_layer_norm(decoder.upscale_conv1(grid)))
    up = decoder.activation(decoder.upscale_conv2(up))
    hyper = torch.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], 1)
    masks = (hyper @ up.flatten(2)).reshape(n, -1, *up.shape[-2:])
    iou = decoder.iou_prediction_head(iou_token_out)
    chosen = slice(1, None) if multimask_output else slice(0, 1)
    return masks[:, chosen], iou[:, chosen]
