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
            box_objects = None
            if batch.samples and batch.samples[b].meta.get("box_objects") is not None:
                box_objects = [F.adaptive_avg_pool2d(torch.as_tensor(o == 1, dtype=torch.float32, device=fg.device)[:, None],
                                                     (h // merge, w // merge)).flatten(1) for o in batch.samples[b].meta["box_objects"]]
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
                    queries += [(r, q, visual, wanted) for q, wanted in self._coordinate_queries(ids, labels, boxes, grid)]
                for i, s in enumerate(segs):
                    queries.append((r, s, visual, shares[k + i]))
                k += len(segs)
        return [(r, q, keys, w / w.sum()) for r, q, keys, w in queries if w.sum() > 0]

    def _coordinate_queries(self, ids, labels, objects, grid):
        """Grounding answers (``meta["box_objects"]``): the token that predicts each digit of a box's
        ``x1, y1, x2, y2`` looks at the object's leftmost / top / rightmost / bottom cells, and of its
        point at all the object's cells, so the number can be read from where the head looks. The
        answer's numbers are runs of number tokens right after ``[`` or ``,`` (list values, not the 2 of
        ``bbox_2d``), six per object (the last ones); an answer with fewer gets none."""
        numbers, _, openers = self.number_tokens(ids.device)
        digits = torch.isin(ids, numbers) & (labels != -100)
        runs, p = [], 0
        positions = torch.nonzero(digits)[:, 0].tolist()
        while p < len(positions):
            q = p
            while q + 1 < len(positions) and positions[q + 1] == positions[q] + 1:
                q += 1
            if bool(torch.isin(ids[positions[p] - 1], openers)):
                runs.append(positions[p:q + 1])
            p = q + 1
        if len(runs) < 6 * len(objects):
            return []
        runs = runs[len(runs) - 6 * len(objects):]  # a caption before the JSON may hold numbers too
        rows, cols = grid
        out = []
        for o, cells in enumerate(objects):
            s = cells.view(rows, cols)
            ys, xs = torch.nonzero(s > 0, as_tuple=True)
            col = torch.arange(cols, device=s.device)[None].expand(rows, cols)
            row = torch.arange(rows, device=s.device)[:, None].expand(rows, cols)
            edges = [s * (col == xs.min()), s * (row == ys.min()), s * (col == xs.max()), s * (row == ys.max()), s, s]
            for run, wanted in zip(runs[6 * o:6 * o + 6], edges):
                out += [(t - 1, wanted.flatten()) for t in run]
        return out

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
