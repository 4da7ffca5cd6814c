"""The ``[SEG]``-token segmenter (LISA / Qwen-SAM): a VLM answers with ``[SEG]``; the final-layer
hidden state of each ``[SEG]`` *input* position, projected into SAM's prompt space, is a sparse
prompt for SAM's mask decoder. One ``[SEG]``, one mask, in order.

Training and generation read the same state (the final layer at the ``[SEG]`` input position of a
teacher-forced pass, or of the generation step in which the emitted ``[SEG]`` is fed back in), and
both turn it into masks through :meth:`SegTokenModel.masks_from_states`, so generating and then
teacher-forcing the same tokens gives the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vlmsam.data.collate import Batch, Collator
from vlmsam.data.sample import Sample
from vlmsam.errors import CheckpointError
from vlmsam.sam.backend import ImageEmbedding, SamBackend
from vlmsam.seg_token.config import SegTokenConfig
from vlmsam.seg_token.losses import answer_starts, answer_weighted_ce, dice_loss, sigmoid_bce_loss
from vlmsam.vlm.processor import VlmProcessor

CONFIG_NAME = "vlmsam_config.json"
ADAPTER_DIR = "adapter"
TRAINABLE_WEIGHTS = "trainable.safetensors"


@dataclass
class SegOutput:
    loss: torch.Tensor
    ce_loss: torch.Tensor
    bce_loss: torch.Tensor
    dice_loss: torch.Tensor
    mask_logits: list[torch.Tensor]  # per image, (N_b, H_b, W_b) in original pixels
    target_loss: torch.Tensor | None = None  # only with prompt_target_weight > 0
    grounding_loss: torch.Tensor | None = None  # only with grounding_weight > 0


class SegTokenModel(nn.Module):
    def __init__(self, vlm: nn.Module, processor: VlmProcessor, sam: SamBackend, config: SegTokenConfig):
        super().__init__()
        if config.prompt_target not in ("region", "point"):  # checked here, not at the first training step
            raise ValueError(f"prompt_target must be 'region' or 'point', got {config.prompt_target!r}")
        self.config = config
        self.processor = processor
        self.vlm = vlm
        self.sam_backend = sam
        self.sam = sam.model  # registered, so .to() / parameters() / state_dict() see it
        hidden = self._text_config().hidden_size
        prompt_dim = sam.model.config.prompt_encoder_config.hidden_size
        self.projection = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, prompt_dim))
        self.projection.to(next(vlm.parameters()).dtype)
        self._grounding_attention: torch.Tensor | None = None
        self._watching = False  # the grounding head is hooked at the first training forward

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def build(cls, config: SegTokenConfig, *, base_dir: Path | None = None) -> SegTokenModel:
        """A fresh model from the base VLM and SAM named in ``config``: ``[SEG]`` added, LoRA applied,
        parts frozen as declared."""
        vlm = _load_vlm(config.vlm, base_dir)
        processor = VlmProcessor.from_pretrained(_resolve(config.vlm, base_dir))
        config.seg_token_id = processor.add_seg_token()
        if vlm.get_input_embeddings().weight.shape[0] < len(processor.tokenizer):
            vlm.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
        sam = SamBackend(_load_sam(config.sam, base_dir))
        model = cls(vlm, processor, sam, config)
        if config.use_lora:
            model.vlm = _apply_lora(vlm, config)
        model.apply_trainable()
        return model

    def _base_vlm(self) -> nn.Module:
        return self.vlm.get_base_model() if hasattr(self.vlm, "get_base_model") else self.vlm

    def _text_config(self):
        cfg = self._base_vlm().config
        return getattr(cfg, "text_config", cfg)

    def _parts(self) -> dict[str, nn.Module]:
        """Every part that can train besides LoRA, found through the model's structure (not by
        matching parameter names). SAM's two positional-embedding copies are one tied tensor, so
        the prompt encoder covers both."""
        base = self._base_vlm()
        return {
            "language_model": base.model.language_model,
            "lm_head": base.get_output_embeddings(),
            "embed_tokens": base.get_input_embeddings(),
            "projection": self.projection,
            "sam_mask_decoder": self.sam.mask_decoder,
            "vision_tower": base.model.visual,
            "sam_image_encoder": self.sam.vision_encoder,
            "sam_prompt_encoder": self.sam.prompt_encoder,
        }

    @staticmethod
    def _own(part: str, key: str) -> bool:
        """Whether ``key`` (a name inside part ``part``) belongs to that part: LoRA weights are their
        own part, and the language model's embeddings are ``embed_tokens``."""
        return "lora_" not in key and not (part == "language_model" and key.startswith("embed_tokens."))

    def components(self) -> dict[str, list[nn.Parameter]]:
        """The parameters of every part that can train, by name (LoRA first)."""
        lora = [p for n, p in self.vlm.named_parameters() if ".lora_" in n]
        return {"lora": lora, **{name: [p for n, p in module.named_parameters() if self._own(name, n)]
                                 for name, module in self._parts().items()}}

    def apply_trainable(self) -> None:
        """Freeze everything, then unfreeze exactly the components the config declares."""
        for p in self.parameters():
            p.requires_grad_(False)
        for name, params in self.components().items():
            if self.config.trainable(name):
                for p in params:
                    p.requires_grad_(True)

    def trainable_summary(self) -> str:
        """A table of trainable / frozen parameter counts per component."""
        seen: set[int] = set()
        rows = []
        for name, params in self.components().items():
            unique = [p for p in params if id(p) not in seen]
            seen.update(id(p) for p in unique)
            n = sum(p.numel() for p in unique)
            trainable = sum(p.numel() for p in unique if p.requires_grad)
            rows.append((name, trainable, n - trainable))
        rest = [p for p in self.parameters() if id(p) not in seen]
        rows.append(("other (frozen base)", sum(p.numel() for p in rest if p.requires_grad), sum(p.numel() for p in rest if not p.requires_grad)))
        lines = [f"{'component':<22}{'trainable':>14}{'frozen':>14}"]
        lines += [f"{name:<22}{t:>14,}{f:>14,}" for name, t, f in rows]
        total_t = sum(r[1] for r in rows)
        total_f = sum(r[2] for r in rows)
        lines.append(f"{'total':<22}{total_t:>14,}{total_f:>14,}")
        return "\n".join(lines)

    # ---- the shared [SEG] read-out ---------------------------------------------------------------

    def vlm_inputs(self, input_ids: torch.Tensor, **kwargs) -> dict:
        return dict(input_ids=input_ids, mm_token_type_ids=self.processor.mm_token_type_ids(input_ids), **kwargs)

    def masks_from_states(self, states: torch.Tensor, embedding: ImageEmbedding):
        """``(N, hidden)`` [SEG] states -> ``(N, H, W)`` mask logits in original pixels and ``(N,)`` predicted IoU."""
        if states.shape[0] == 0:
            return states.new_zeros((0, *embedding.original_size)), states.new_zeros((0,))
        sparse = self.projection(states)[:, None, :]
        low, iou = self.sam_backend.decode(embedding, sparse_embeddings=sparse)
        return self.sam_backend.upscale_logits(low, embedding)[:, 0], iou[:, 0]

    def prompt_target_loss(self, states: torch.Tensor, targets: torch.Tensor, embedding: ImageEmbedding) -> torch.Tensor:
        """Summed MSE between the projected [SEG] states and their targets in SAM's terms (see
        ``SegTokenConfig.prompt_target``)."""
        in_sam = self.region_embeddings if self.config.prompt_target == "region" else self.point_embeddings
        with torch.no_grad():
            wanted = in_sam(targets, embedding)
        return F.mse_loss(self.projection(states).float(), wanted.float(), reduction="none").mean(-1).sum()

    def region_embeddings(self, targets: torch.Tensor, embedding: ImageEmbedding) -> torch.Tensor:
        """``(N, C)``: SAM's image embedding averaged over each target, weighted by how much of
        each grid cell the target covers in SAM's resized, padded input frame."""
        (h1, w1), grid = embedding.input_size, embedding.embeddings.shape[-1]
        size = self.sam.config.vision_config.image_size
        fg = (targets == 1).float()[:, None]
        fg = F.interpolate(fg, size=(h1, w1), mode="bilinear", align_corners=False)
        fg = F.pad(fg, (0, size - w1, 0, size - h1))
        weights = F.adaptive_avg_pool2d(fg, grid)[:, 0].to(embedding.embeddings.dtype)  # (N, g, g)
        feats = embedding.embeddings[0]  # (C, g, g)
        return torch.einsum("nhw,chw->nc", weights, feats) / weights.flatten(1).sum(1, keepdim=True).clamp_min(1e-6)

    def point_embeddings(self, targets: torch.Tensor, embedding: ImageEmbedding) -> torch.Tensor:
        """``(N, C)``: SAM's prompt embedding of a foreground point at each target's centre of
        mass (the target pixel nearest to it, so a concave target still gets a point on itself)."""
        points = []
        for mask in targets:
            ys, xs = torch.nonzero(mask == 1, as_tuple=True)
            if len(xs) == 0:
                ys, xs = torch.nonzero(mask != 255, as_tuple=True)
            cy, cx = ys.float().mean(), xs.float().mean()
            k = torch.argmin((ys - cy) ** 2 + (xs - cx) ** 2)
            points.append(torch.stack([xs[k], ys[k]]).float())  # SAM adds the half-pixel shift itself
        coords = self.sam_backend.transform_coords(torch.stack(points), embedding).to(self.sam_backend.device, self.sam_backend.dtype)
        labels = torch.ones(len(points), 1, 1, dtype=torch.long, device=coords.device)
        return self.sam.prompt_encoder._embed_points(coords[:, None, None], labels, pad=False)[:, 0, 0]

    # ---- grounding attention (SegTokenConfig.grounding_weight) ----------------------------------

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

    # ---- training -------------------------------------------------------------------------------

    @property
    def collator(self) -> Collator:
        """Turns :class:`Sample` s into a :class:`Batch` for :meth:`forward` (use its ``prepare`` in
        DataLoader workers)."""
        if getattr(self, "_collator", None) is None:
            self._collator = Collator(self.processor, self.sam_backend.processor)
        return self._collator

    def encode_sam_batch(self, batch: Batch) -> list[ImageEmbedding]:
        """SAM image embeddings of the batch's images, in one encoder call (with gradients only when
        the SAM image encoder trains), or read from the SAM embedding cache when one is attached."""
        cache = getattr(self, "sam_cache", None)
        if cache is not None and not self.config.train_sam_image_encoder:
            return [self._cached_embedding(cache, s.image) for s in batch.samples]
        pixels = batch.sam_pixels.to(self.sam_backend.device, self.sam_backend.dtype)
        with torch.set_grad_enabled(self.config.train_sam_image_encoder and torch.is_grad_enabled()):
            emb = self.sam.vision_encoder(pixels).last_hidden_state
        return [ImageEmbedding(emb[b : b + 1], o, r) for b, (o, r) in enumerate(zip(batch.original_sizes, batch.input_sizes))]

    def _cached_embedding(self, cache, image) -> ImageEmbedding:
        if not isinstance(image, (str, Path)):  # in-memory images are not cached
            return self.sam_backend.encode(image)
        emb = cache.get(image)
        if emb is None:
            emb = self.sam_backend.encode(image)
            cache.put(image, emb)
        return ImageEmbedding(emb.embeddings.to(self.sam_backend.device, self.sam_backend.dtype), emb.original_size, emb.input_size)

    def vision_features(self, batch: Batch):
        """The VLM's vision features, computed once per image and shared by the image's rows."""
        features = self._base_vlm().model.get_image_features(batch.pixel_values, batch.image_grid_thw, return_dict=True)
        if len(batch.row_image) != len(batch) and getattr(features, "deepstack_features", None) is not None:
            # Qwen3-VL also feeds per-token deepstack features; repeat the pixels per row instead.
            rows = batch.row_image.tolist()
            patches = torch.split(batch.pixel_values, batch.image_grid_thw.prod(-1).tolist())
            pixel_values = torch.cat([patches[b] for b in rows])
            return self._base_vlm().model.get_image_features(pixel_values, batch.image_grid_thw[batch.row_image], return_dict=True)
        features.pooler_output = tuple(features.pooler_output[b] for b in batch.row_image.tolist())
        return features

    def forward(self, batch: Batch | list[Sample]) -> SegOutput:
        """Losses for a batch (CE on assistant tokens + BCE + Dice on masks)."""
        if not isinstance(batch, Batch):
            batch = self.collator(batch)
        device = next(self.vlm.parameters()).device
        batch = batch.to(device)
        if self.config.grounding_weight > 0 and self.training and not self._watching:
            self._watch_grounding_head()  # not before: inference keeps the faster attention
        out = self.vlm(
            **self.vlm_inputs(batch.input_ids),
            attention_mask=batch.attention_mask,
            mm_encoder_outputs={"image": self.vision_features(batch)},
            image_grid_thw=batch.image_grid_thw[batch.row_image],
            output_hidden_states=True,
        )
        hidden = out.hidden_states[-1]
        embeddings = self.encode_sam_batch(batch)
        bce = dice = aux = hidden.new_zeros((), dtype=torch.float32)
        n_masks = 0
        logits_out = []
        c = self.config
        for b in range(len(batch)):
            rows = range(batch.offsets[b], batch.offsets[b + 1])
            # Rows are the image's conversations in order, so the [SEG]s come in target order.
            states = torch.cat([hidden[r, batch.input_ids[r] == self.config.seg_token_id] for r in rows])
            targets = batch.masks[b]
            logits, _ = self.masks_from_states(states, embeddings[b])
            logits_out.append(logits)
            if len(targets):
                bce = bce + sigmoid_bce_loss(logits, targets)
                dice = dice + dice_loss(logits, targets)
                if c.prompt_target_weight > 0:
                    aux = aux + self.prompt_target_loss(states, targets, embeddings[b])
                n_masks += len(targets)
        bce = bce / (n_masks + 1e-8)
        dice = dice / (n_masks + 1e-8)
        ce = answer_weighted_ce(out.logits, batch.labels, c.answer_start_weight)  # weight 1: the usual causal-LM CE
        loss = c.ce_weight * ce + c.bce_weight * bce + c.dice_weight * dice
        aux = aux / (n_masks + 1e-8)
        if c.prompt_target_weight > 0:
            loss = loss + c.prompt_target_weight * aux
        grounding = None
        if c.grounding_weight > 0 and self._grounding_attention is not None:
            grounding = self.grounding_loss(batch, self._grounding_attention)
            loss = loss + c.grounding_weight * grounding
        return SegOutput(loss, ce.detach(), bce.detach(), dice.detach(), logits_out,
                         aux.detach() if c.prompt_target_weight > 0 else None,
                         grounding.detach() if grounding is not None else None)

    # ---- inference (the segmenter contract lives in seg_token/segmenter.py) -----------------------

    @torch.no_grad()
    def teacher_forced_states(self, prefix, prompt: str, answer_ids: torch.Tensor) -> torch.Tensor:
        """[SEG] states from one forward pass over prompt + ``answer_ids`` (the training read-out) for an
        image whose :class:`~vlmsam.vlm.generation.VisionPrefix` is ``prefix``."""
        enc = self.processor.encode([(prompt, None)], image_inputs=(prefix.pixel_values, prefix.grid, prefix.n_tokens))
        ids = torch.cat([enc.input_ids.to(answer_ids.device), answer_ids])[None].to(prefix.grid.device)
        out = self.vlm(**self.vlm_inputs(ids), pixel_values=prefix.pixel_values, image_grid_thw=prefix.grid,
                       output_hidden_states=True)
        positions = (ids[0] == self.config.seg_token_id).nonzero().flatten()
        return out.hidden_states[-1][0, positions]

    # ---- save / load ------------------------------------------------------------------------------

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Declared trainable weights other than LoRA (LoRA goes to the peft adapter); the
        projection is always included, as it exists in no base model."""
        out = {}
        for name, module in self._parts().items():
            if name == "projection" or self.config.trainable(name):
                for key, value in module.state_dict().items():
                    if self._own(name, key):
                        out[f"{name}.{key.replace('base_layer.', '')}"] = value.detach().contiguous().cpu()
        return out

    def save_pretrained(self, out_dir: str | Path, *, projection_only: bool = False) -> Path:
        """Config, trained weights (``trainable.safetensors``, LoRA as a peft adapter) and tokenizer.
        ``projection_only``: the other weights are saved in full beside it (``save_merged``)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.config.save(out / CONFIG_NAME)
        state = self.trainable_state_dict()
        if projection_only:
            state = {k: v for k, v in state.items() if k.startswith("projection.")}
        if self.config.train_lm_head and self.config.train_embed_tokens and self._tied():
            state.pop("embed_tokens.weight", None)  # the same tensor as lm_head
        save_file(state, str(out / TRAINABLE_WEIGHTS))
        if self.config.use_lora:
            self.vlm.save_pretrained(str(out / ADAPTER_DIR))
        self.processor.save_pretrained(out)
        return out

    def _tied(self) -> bool:
        base = self._base_vlm()
        return base.get_output_embeddings().weight is base.get_input_embeddings().weight

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device=None) -> SegTokenModel:
        path = Path(path)
        if not (path / CONFIG_NAME).is_file():
            raise CheckpointError(f"{path}: not a vlmsam [SEG] checkpoint (no {CONFIG_NAME})")
        config = SegTokenConfig.load(path / CONFIG_NAME)
        vlm = _load_vlm(config.vlm, path)
        processor = VlmProcessor.from_pretrained(path)
        if processor.seg_token_id != config.seg_token_id:
            raise CheckpointError(f"{path}: the tokenizer's [SEG] id {processor.seg_token_id} differs from the config's {config.seg_token_id}")
        if vlm.get_input_embeddings().weight.shape[0] != len(processor.tokenizer):
            vlm.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
        model = cls(vlm, processor, SamBackend(_load_sam(config.sam, path)), config)
        if config.use_lora and (path / ADAPTER_DIR).is_dir():
            from peft import PeftModel

            model.vlm = PeftModel.from_pretrained(vlm, str(path / ADAPTER_DIR))
        model._load_trainable_weights(path)
        model.apply_trainable()
        if device is not None:
            model.to(device)
        return model.eval()

    def _load_trainable_weights(self, path: Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(path / TRAINABLE_WEIGHTS))
        for name, module in self._parts().items():
            sub = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            if not sub:
                continue
            if hasattr(module, "base_layer"):  # peft wraps lm_head/embeddings it targets
                module = module.base_layer
            missing, unexpected = module.load_state_dict(sub, strict=False)
            if unexpected or (missing and name == "projection"):
                raise CheckpointError(f"{path}: {name} weights do not fit: missing {missing}, unexpected {unexpected}")

    def load_trainable(self, path: str | Path) -> None:
        """Load a checkpoint's trained weights (LoRA adapter + declared parts) into this model, which
        must have been built from the same config (how training resumes)."""
        from safetensors.torch import load_file

        path = Path(path)
        if self.config.use_lora:
            from peft import set_peft_model_state_dict

            adapter = path / ADAPTER_DIR / "adapter_model.safetensors"
            if not adapter.is_file():
                raise CheckpointError(f"{path}: no LoRA adapter ({adapter.name}) in this checkpoint")
            result = set_peft_model_state_dict(self.vlm, load_file(str(adapter)))
            if getattr(result, "unexpected_keys", None):
                raise CheckpointError(f"{path}: LoRA adapter does not fit this model: {result.unexpected_keys[:3]}")
        self._load_trainable_weights(path)

    def merge_lora(self) -> SegTokenModel:
        """Fold LoRA into the base weights (in place); the model no longer needs peft."""
        if self.config.use_lora and hasattr(self.vlm, "merge_and_unload"):
            self.vlm = self.vlm.merge_and_unload()
        self.config.use_lora = False
        return self

    def save_merged(self, out_dir: str | Path) -> Path:
        """A standalone checkpoint: merged VLM and SAM saved in full beside the config."""
        out = Path(out_dir)
        self.merge_lora()
        self._base_vlm().save_pretrained(out / "vlm")
        self.sam.save_pretrained(out / "sam")
        self.config.vlm, self.config.sam = "vlm", "sam"
        return self.save_pretrained(out, projection_only=True)


def _resolve(name: str, base_dir: Path | None) -> str:
    if base_dir is not None and not Path(name).is_absolute() and (base_dir / name).exists():
        return str(base_dir / name)
    return name


def _load_vlm(name: str, base_dir: Path | None):
    from vlmsam.vlm.runtime import load_vlm_model

    return load_vlm_model(_resolve(name, base_dir))


def _load_sam(name: str, base_dir: Path | None):
    from vlmsam.sam.checkpoints import load_sam_model

    return load_sam_model(_resolve(name, base_dir))


def _apply_lora(vlm: nn.Module, config: SegTokenConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = "|".join(config.lora_targets)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        # Language layers only: the vision tower uses some of the same module names.
        target_modules=rf".*language_model.*\.({targets})$",
        bias="none",
    )
    return get_peft_model(vlm, lora)
