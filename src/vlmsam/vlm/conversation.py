"""A multi-turn, multi-image conversation with a loaded VLM that never recomputes what it has seen.

Each image's vision features are computed once per conversation (the first image's come from its
:class:`~vlmsam.vlm.generation.VisionPrefix`). Each *thread* of the conversation keeps the token keys
and the key/value cache of its last call; the next call feeds only the tokens after the longest
common prefix (a pruned history cuts the cache back to where it changed; image tokens are keyed by
the image, so one picture replaced by another of the same size is recomputed, not reused).
``reuse=False`` recomputes everything every turn: the baseline ``benchmarks/bench_agent.py`` measures.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from vlmsam.vlm.messages import Message


def _first_image(output) -> tuple:
    """One image's slice of ``get_image_features``'s output: its features and, for Qwen3-VL, the features
    its deepstack layers add to the language model's early layers (``None`` for Qwen2/2.5-VL)."""
    deep = getattr(output, "deepstack_features", None)
    return output.pooler_output[0], None if deep is None else [layer[0] for layer in deep], type(output)


def _joined(features: list[tuple]):
    """The encoder output ``mm_encoder_outputs`` takes for the images in ``features``, in order."""
    kind = features[0][2]
    out = kind(pooler_output=[f[0] for f in features])
    if features[0][1] is not None:  # Qwen3-VL's deepstack: per layer, the images' features in order
        out.deepstack_features = [[f[1][layer] for f in features] for layer in range(len(features[0][1]))]
    return out


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class LocalConversation:
    """Greedy replies of ``runtime`` (a :class:`~vlmsam.vlm.runtime.VlmRuntime`) to growing message lists."""

    def __init__(self, runtime, prefix=None, image=None, *, reuse: bool = True):
        self.runtime, self.reuse = runtime, reuse
        self.base, self.processor = runtime.base, runtime.processor
        self._images: dict[int, tuple] = {}  # id(image) -> (image, grid, n_tokens, features, serial)
        self._threads: dict[str, tuple[list[int], DynamicCache]] = {}
        self.fed_tokens = 0  # tokens run through the language model (the benchmark reads it)
        if prefix is not None and image is not None and reuse:
            self._images[id(image)] = (image, prefix.grid, prefix.n_tokens, _first_image(prefix.features), 0)

    def _image(self, image) -> tuple:
        found = self._images.get(id(image))
        if found is None or found[0] is not image:
            pixel_values, grid, n_tokens = self.processor.image_inputs(image)
            device = self.runtime.device
            grid = grid.to(device)
            features = _first_image(self.base.model.get_image_features(pixel_values.to(device), grid, return_dict=True))
            found = (image, grid, n_tokens, features, len(self._images))  # held: its id is never reused meanwhile
            if self.reuse:
                self._images[id(image)] = found
        return found

    def _tokens(self, messages: list[Message]) -> tuple[list[int], list[int], list[tuple[int, tuple]]]:
        """Token ids, their keys (image tokens keyed by image) and each image's (start, entry)."""
        entries = {}

        def image_tokens(image) -> int:
            entries[id(image)] = self._image(image)
            return entries[id(image)][2]

        with self.runtime._tokenizer_lock:  # the fast tokenizer refuses concurrent use
            ids, keys, _, spans = self.processor.encode_messages(messages, image_tokens, open_answer=True,
                                                                 image_key=lambda image: entries[id(image)][4])
        return ids, keys, [(start, entries[id(image)]) for start, image in spans]

    @torch.inference_mode()
    def reply(self, messages: list[Message], *, max_new_tokens: int = 256, thread: str = "main") -> str:
        """The model's greedy answer to ``messages`` (its open assistant turn), as text."""
        ids, keys, spans = self._tokens(messages)
        device = self.runtime.device
        ids_t = torch.tensor(ids, device=device)[None]
        kinds = self.processor.mm_token_type_ids(ids_t)
        grids = torch.cat([e[1] for _, e in spans]) if spans else None
        positions, _ = self.base.model.get_rope_index(ids_t, mm_token_type_ids=kinds, image_grid_thw=grids,
                                                      attention_mask=torch.ones_like(ids_t))
        old_keys, cache = self._threads.pop(thread, ([], None)) if self.reuse else ([], None)  # back once consistent
        common = min(_common_prefix(old_keys, keys), len(ids) - 1)
        for start, entry in spans:  # never cut inside an image: its features go in whole
            if start <= common < start + entry[2]:
                common = start - 1
        if cache is None or common == 0:
            cache, common = DynamicCache(config=self.base.config), 0
        else:
            cache.crop(common - cache.get_seq_length())  # transformers 5: a negative count removes that many
        fed = [e for start, e in spans if start >= common]
        vision = {"image": _joined([e[3] for e in fed])} if fed else None
        out = self.base.model(input_ids=ids_t[:, common:], attention_mask=torch.ones_like(ids_t),
                              position_ids=positions[:, :, common:], past_key_values=cache, use_cache=True,
                              mm_token_type_ids=kinds[:, common:], mm_encoder_outputs=vision,
                              image_grid_thw=torch.cat([e[1] for e in fed]) if fed else None)
        self.fed_tokens += len(ids) - common
        tokens = self._decode(out, cache, int(positions.max()) + 1, len(ids), max_new_tokens)
        if self.reuse:
            self._threads[thread] = (keys + tokens[: cache.get_seq_length() - len(ids)], cache)
        return self.runtime.decode(torch.tensor(tokens, dtype=torch.long))

    def _decode(self, out, cache, position: int, length: int, max_new_tokens: int) -> list[int]:
        """Greedy tokens until ``<|im_end|>`` or the limit; each but the last is fed back into ``cache``."""
        device = self.runtime.device
        lm_head = self.base.get_output_embeddings()
        tokens: list[int] = []
        hidden = out.last_hidden_state[:, -1]
        while True:
            t = int(lm_head(hidden).float().argmax(-1))
            if t == self.processor.im_end:
                break
            tokens.append(t)
            if len(tokens) >= max_new_tokens:
                break
            length += 1
            out = self.base.model(input_ids=torch.tensor([[t]], device=device),
                                  attention_mask=torch.ones((1, length), dtype=torch.long, device=device),
                                  position_ids=torch.full((3, 1, 1), position, device=device), past_key_values=cache,
                                  use_cache=True)
            self.fed_tokens += 1
            position += 1
            hidden = out.last_hidden_state[:, -1]
        return tokens
