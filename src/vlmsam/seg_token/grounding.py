"""Grounding attention (``SegTokenConfig.grounding_weight``): one attention head of the language model is
taught where each [SEG] (and each answer's deciding token) should look among the visual tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlmsam.data.collate import Batch
from vlmsam.seg_token.losses import answer_starts


class GroundingMixin:

    def _watch_grounding_head(self) -> None:
        """Keep the attention weights of layer ``grounding_layer`` during training forwards. The
        language model runs eager attention (SDPA and flash attention return no weights); all its
        layers do, as the causal mask is built in the format of the model's one implementation."""
        self._watching = True
        base = self._base_vlm()
        base.set_attn_implementation({"text_config": "eager"} if hasattr(base.config, "text_config") else "eager")
        attn = base.model.language_model.layers[self.config.grounding_layer].self_attn

        def keep(module, args, output):
            # The latest training forward's, for its loss; inference keeps none.
            self._grounding_attention = output[1] if self.training and torch.is_grad_enabled() else None

        attn.register_forward_hook(keep)

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
            k = 0
            for c, r in enumerate(range(batch.offsets[b], batch.offsets[b + 1])):
                ids, labels = batch.input_ids[r], batch.labels[r]
                visual = torch.nonzero(ids == image_token)[:, 0]
                if len(visual) != shares.shape[1]:
                    raise ValueError(f"row {r}: {len(visual)} visual tokens, {shares.shape[1]} cells")
                segs = torch.nonzero(ids == self.config.seg_token_id)[:, 0].tolist()
                starts = torch.nonzero(answer_starts(labels))[:, 0].tolist()  # the token before each answer
                ends = [*starts[1:], len(ids)]
                for d, end in zip(starts, ends):
                    inside = [i for i, s in enumerate(segs) if d < s < end]
                    if inside:
                        queries.append((r, d, visual, shares[[k + i for i in inside]].sum(0).clamp(max=1.0)))
                    elif c in refusals:
                        sink = torch.nonzero(ids == self.processor.vision_start)[:1, 0]
                        queries.append((r, d, sink, torch.ones(len(sink), device=sink.device)))
                for i, s in enumerate(segs):
                    queries.append((r, s, visual, shares[k + i]))
                k += len(segs)
        return [(r, q, keys, w / w.sum()) for r, q, keys, w in queries if w.sum() > 0]

    def grounding_loss(self, batch: Batch, attention: torch.Tensor) -> torch.Tensor:
        """Mean CE between each query's wanted distribution and where the first head of the
        grounding layer looks (``attention``: ``(rows, heads, L, L)``)."""
        losses = [-(wanted * torch.log(attention[r, 0, q, keys].float() + 1e-6)).sum()
                  for r, q, keys, wanted in self.grounding_queries(batch)]
        return torch.stack(losses).mean() if losses else attention.new_zeros((), dtype=torch.float32)
