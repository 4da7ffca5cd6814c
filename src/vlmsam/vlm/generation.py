"""Generation for every design: one image prefix, any number of requests, in one batch.

Every request about an image starts with the same tokens (system prompt, user head, the vision
tokens). :func:`encode_prefix` runs the language model over them once and keeps their key/value
cache in the image's handle; :func:`generate_many` copies that cache to k rows and decodes k
requests together. Nothing is stored on the model: positions are computed here and passed
explicitly (transformers' own ``generate`` keeps the M-RoPE offset on the model, which two
threads would overwrite), so one loaded model serves concurrent callers.

With ``state_token`` (the ``[SEG]`` id) the final-layer hidden state of every such token is kept,
read as training reads it: at the step in which the emitted token is fed back in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass(frozen=True)
class VisionPrefix:
    """The VLM side of one encoded image (held by the image's ``EncodedImage``).

    Attributes:
        pixel_values, grid, n_tokens: the processor's output for the image (``grid`` is ``(1, 3)``).
        features: the vision tower's output (``get_image_features``).
        ids: ``(P,)`` the prefix token ids, ending with ``<|vision_end|>``.
        positions: ``(3, 1, P)`` their M-RoPE positions.
        kv: per layer ``(keys, values)``, each ``(1, heads, P, head_dim)``; ``None`` when made without it
            (a multi-turn conversation with its own system prompt starts from other tokens and never uses it).
    """

    pixel_values: torch.Tensor
    grid: torch.Tensor
    n_tokens: int
    features: object
    ids: torch.Tensor
    positions: torch.Tensor
    kv: tuple


def encode_prefix(base, processor, image, device, *, cache: bool = True) -> VisionPrefix:
    """Vision features and (``cache``) the prefix's key/value cache for ``image`` (a PIL image)."""
    pixel_values, grid, n_tokens = processor.image_inputs(image)
    pixel_values, grid = pixel_values.to(device), grid.to(device)
    features = base.model.get_image_features(pixel_values, grid, return_dict=True)
    ids = processor.encode([("", None)], image_inputs=(pixel_values, grid, n_tokens)).input_ids
    end = int((ids == processor.vision_end).nonzero()[0, 0]) + 1
    ids = ids[:end].to(device)[None]
    positions, _ = base.model.get_rope_index(ids, mm_token_type_ids=processor.mm_token_type_ids(ids),
                                             image_grid_thw=grid, attention_mask=torch.ones_like(ids))
    if not cache:
        return VisionPrefix(pixel_values, grid, n_tokens, features, ids[0], positions, None)
    out = base.model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions,
                     mm_token_type_ids=processor.mm_token_type_ids(ids), mm_encoder_outputs={"image": features},
                     image_grid_thw=grid, use_cache=True)
    kv = tuple((layer.keys, layer.values) for layer in out.past_key_values.layers)
    return VisionPrefix(pixel_values, grid, n_tokens, features, ids[0], positions, kv)


def _prefill(base, prefix: VisionPrefix, ids, mask, positions) -> tuple[DynamicCache, torch.Tensor]:
    """The model over the k prompts' words after the prefix's cache: the cache (k rows) and each row's last
    hidden state. Identical prompts (a GRPO group) are run once and their cache repeated, not run k times."""
    k = ids.shape[0]
    rows = 1 if all(torch.equal(row, ids[0]) for row in ids[1:]) else k
    cache = DynamicCache(config=base.config)
    for layer, (key, value) in enumerate(prefix.kv):
        cache.update(key.expand(rows, -1, -1, -1), value.expand(rows, -1, -1, -1), layer)
    out = base.model(input_ids=ids[:rows], attention_mask=mask[:rows], position_ids=positions[:, :rows],
                     past_key_values=cache, use_cache=True)
    if rows < k:
        out.past_key_values.batch_repeat_interleave(k)
    return out.past_key_values, out.last_hidden_state[:, -1].expand(k, -1)


@dataclass
class Generated:
    """One request's answer: new token ids ``(T,)`` (without ``<|im_end|>``) and the ``(S, hidden)``
    final-layer states of its ``state_token`` s (none without one)."""

    tokens: torch.Tensor
    states: torch.Tensor


def generate_many(base, prefix: VisionPrefix, request_ids: list[torch.Tensor], *, stop_id: int, pad_id: int,
                  state_token: int | None = None, max_new_tokens: int = 128, logits_processor=None,
                  sampler=None) -> list[Generated]:
    """Greedy answers to k encoded requests (full prompts, each starting with ``prefix.ids``); ``sampler``
    (``scores (k, vocab) -> tokens (k,)``) draws instead of the argmax (RL rollouts)."""
    p = len(prefix.ids)
    device = prefix.ids.device
    for ids in request_ids:
        if len(ids) <= p or not torch.equal(ids[:p].to(device), prefix.ids):
            raise ValueError("a request's prompt does not start with the image prefix")
    k = len(request_ids)
    suffixes = [ids[p:].to(device) for ids in request_ids]
    width = max(len(s) for s in suffixes)
    # Left-pad the suffixes, so every row's last token is at the end; the pads sit between the
    # prefix and the suffix and are masked out.
    ids = torch.full((k, width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((k, p + width), dtype=torch.long, device=device)
    mask[:, :p] = 1
    start = int(prefix.positions.max()) + 1  # text after the image continues from its largest position
    positions = torch.zeros((3, k, width), dtype=torch.long, device=device)
    next_pos = torch.empty(k, dtype=torch.long, device=device)
    for r, s in enumerate(suffixes):
        ids[r, width - len(s):] = s
        mask[r, p + width - len(s):] = 1
        positions[:, r, width - len(s):] = torch.arange(start, start + len(s), device=device)
        next_pos[r] = start + len(s)
    lm_head = base.get_output_embeddings()
    seen = torch.cat([prefix.ids.expand(k, -1), ids], dim=1)  # what a logits processor is shown
    cache, hidden = _prefill(base, prefix, ids, mask, positions)
    tokens: list[list[int]] = [[] for _ in range(k)]
    states: list[list[torch.Tensor]] = [[] for _ in range(k)]
    done = [False] * k
    while True:
        scores = lm_head(hidden).float()
        if logits_processor is not None:
            scores = logits_processor(seen, scores)
        chosen = scores.argmax(-1) if sampler is None else sampler(scores)
        feed = torch.full((k,), pad_id, dtype=torch.long, device=device)
        for r in range(k):
            if done[r]:
                continue
            t = int(chosen[r])
            if t == stop_id:
                done[r] = True
                continue
            tokens[r].append(t)
            feed[r] = t
        fed = [not done[r] for r in range(k)]
        for r in range(k):
            if len(tokens[r]) >= max_new_tokens:
                done[r] = True  # its last token is still fed once, so a final [SEG] gets its state
        if not any(f and tokens[r] and tokens[r][-1] == state_token for r, f in enumerate(fed)) and all(done):
            break
        if not any(fed):
            break
        mask = torch.cat([mask, torch.tensor(fed, dtype=torch.long, device=device)[:, None]], dim=1)
        step_pos = next_pos.clone()
        next_pos = next_pos + torch.tensor(fed, dtype=torch.long, device=device)
        out = base.model(input_ids=feed[:, None], attention_mask=mask, position_ids=step_pos.view(1, k, 1).expand(3, k, 1),
                         past_key_values=cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1]
        seen = torch.cat([seen, feed[:, None]], dim=1)
        for r in range(k):
            if fed[r] and int(feed[r]) == state_token:
                states[r].append(hidden[r])
        if all(done):
            break
    hidden_size = hidden.shape[-1]
    return [Generated(torch.tensor(t, dtype=torch.long), torch.stack(s) if s else hidden.new_zeros((0, hidden_size)))
            for t, s in zip(tokens, states)]
