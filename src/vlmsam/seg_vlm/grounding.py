"""Grounding attention (``grounding_weight`` in a config): one attention head of the language model is
taught where each [SEG] (and each answer's deciding token) should look among the visual tokens.

The attention is an explicit output of the training forward (``output_attentions`` of the language
model, whose layers then run eager attention: SDPA and flash attention return no weights); the loss
reads layer ``grounding_layer`` of it. A design whose answers name objects otherwise (box_prompt's
grounding JSON) adds its queries through :meth:`GroundingMixin.answer_objects` and
:meth:`GroundingMixin.coordinate_queries`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlmsam.data.collate import Batch
from vlmsam.seg_vlm.losses import answer_starts


class GroundingMixin:

    def use_eager_attention(self) -> None:
        """Run the language model's attention eagerly, so that a forward can return its weights (all its
        layers do, as the causal mask is built in the format of the model's one implementation). Called at
        the first training forward that needs the weights: inference keeps the faster attention."""
        base = self._base_vlm()
        if base.config.get_text_config()._attn_implementation != "eager":
            base.set_attn_implementation({"text_config": "eager"} if hasattr(base.config, "text_config") else "eager")

    def grounding_attention(self, out) -> torch.Tensor:
        """``(rows, heads, L, L)``: the attention weights of layer ``grounding_layer`` in a forward's output."""
        return out.attentions[self.config.grounding_layer]

    def number_tokens(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(ids, values, openers)`` for ``number_sigma``: the tokens that are a whole number (sorted by
        id) with their values, and the tokens after which a number is a list value (ending in ``[`` or ``,``)."""
        if getattr(self, "_numbers", None) is None or self._numbers[0].device != torch.device(device):
            tokenizer = self.processor.tokenizer
            vocab = tokenizer.get_vocab()
            pairs = sorted((i, int(t)) for t, i in vocab.items() if t.isdigit() and t.isascii())
            openers = [i for i in vocab.values() if tokenizer.decode([i]).rstrip().endswith(("[", ","))]
            self._numbers = (torch.tensor([i for i, _ in pairs], device=device), torch.tensor([v for _, v in pairs], device=device),
                             torch.tensor(sorted(openers), device=device))
        return self._numbers

    def answer_objects(self, batch: Batch, b: int, grid: tuple[int, int]) -> list[torch.Tensor] | None:
        """Per conversation of image ``b``, the ``(objects, cells)`` shares of the objects its answer names
        without [SEG] (none here: a subclass whose answers do so says)."""
        return None

    def coordinate_queries(self, ids, labels, objects, grid) -> list[tuple[int, torch.Tensor]]:
        """``(position, wanted)`` queries of the answer tokens that write an object's coordinates (none here)."""
        return []

    def grounding_queries(self, batch: Batch) -> list[tuple[int, int, torch.Tensor, torch.Tensor]]:
        """``(row, position, keys, wanted)`` for every supervised query: each [SEG] looks at its
        target, the token before each answer that has [SEG]s at all of that answer's targets,
        and the token before an answer that says nothing matches (conversations a dataset lists
        in ``meta["no_target"]``) at the ``<|vision_start|>`` token, a sink that stands for "none
        of these". ``keys`` are the positions looked at, ``wanted`` sums to 1 over them; a
        target's weight on a visual token is its share of that merged cell."""
        merge = self.processor.image_processor.merge_size
        image_token = self._base_vlm().config.image_token_id
        queries = []
        for b in range(len(batch)):
            _, h, w = batch.image_grid_thw[b].tolist()
            fg = (batch.masks[b] == 1).float()[:, None]
            shares = F.adaptive_avg_pool2d(fg, (h // merge, w // merge)).flatten(1)  # (targets, cells)
            refusals = set(batch.samples[b].meta.get("no_target", [])) if batch.samples and self.config.grounding_sink else set()
            box_objects = self.answer_objects(batch, b, (h // merge, w // merge))
            k = 0
            for c, r in enumerate(range(batch.offsets[b], batch.offsets[b + 1])):
                ids, labels = batch.input_ids[r], batch.labels[r]
                visual = torch.nonzero(ids == image_token)[:, 0]
                if len(visual) != shares.shape[1]:
                    raise ValueError(f"row {r}: {len(visual)} visual tokens, {shares.shape[1]} cells")
                segs = torch.nonzero(ids == self.config.seg_token_id)[:, 0].tolist()
                starts = torch.nonzero(answer_starts(labels))[:, 0].tolist()  # the token before each answer
                ends = [*starts[1:], len(ids)]
                boxes = box_objects[c] if box_objects is not None else None
                for d, end in zip(starts, ends):
                    inside = [i for i, s in enumerate(segs) if d < s < end]
                    if inside:
                        queries.append((r, d, visual, shares[[k + i for i in inside]].sum(0).clamp(max=1.0)))
                    elif boxes is not None and len(boxes):
                        queries.append((r, d, visual, boxes.sum(0).clamp(max=1.0)))
                    elif c in refusals:
                        sink = torch.nonzero(ids == self.processor.vision_start)[:1, 0]
                        queries.append((r, d, sink, torch.ones(len(sink), device=sink.device)))
                if boxes is not None and len(boxes):
                    grid = (h // merge, w // merge)
                    queries += [(r, q, visual, wanted) for q, wanted in self.coordinate_queries(ids, labels, boxes, grid)]
                for i, s in enumerate(segs):
                    queries.append((r, s, visual, shares[k + i]))
                k += len(segs)
        return [(r, q, keys, w / w.sum()) for r, q, keys, w in queries if w.sum() > 0]

    def grounding_loss(self, batch: Batch, attention: torch.Tensor) -> torch.Tensor:
        """Mean CE between each query's wanted distribution and where the first head of the
        grounding layer looks (``attention``: ``(rows, heads, L, L)``)."""
        queries = self.grounding_queries(batch)
        if not queries:
            return attention.new_zeros((), dtype=torch.float32)
        # One gather for all queries (a grounding answer has a dozen per object): dense wanted rows.
        wanted = attention.new_zeros((len(queries), attention.shape[-1]), dtype=torch.float32)
        for i, (_, _, keys, w) in enumerate(queries):
            wanted[i, keys] = w.float()
        rows = torch.tensor([r for r, *_ in queries], device=attention.device)
        at = torch.tensor([q for _, q, *_ in queries], device=attention.device)
        looked = attention[rows, 0, at].float()
        return -(wanted * torch.log(looked + 1e-6)).sum(1).mean()
