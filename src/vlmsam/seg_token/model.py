"""The ``[SEG]``-token segmenter (LISA / Qwen-SAM): a VLM answers with ``[SEG]``; the final-layer
hidden state of each ``[SEG]`` *input* position, projected into SAM's prompt space, is a sparse
prompt for SAM's mask decoder. One ``[SEG]``, one mask, in order.

Training and generation read the same state (the final layer at the ``[SEG]`` input position of a
teacher-forced pass, or of the generation step in which the emitted ``[SEG]`` is fed back in), and
both turn it into masks through :meth:`SegTokenModel.masks_from_states`, so generating and then
teacher-forcing the same tokens gives the same masks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vlmsam.errors import CheckpointError
from vlmsam.io.images import ImageSource, load_image
from vlmsam.result import SegmentationResult
from vlmsam.sam.backend import MASK_THRESHOLD, ImageEmbedding, SamBackend
from vlmsam.seg_token.config import SegTokenConfig
from vlmsam.seg_token.losses import dice_loss, sigmoid_bce_loss
from vlmsam.vlm.processor import VlmProcessor

CONFIG_NAME = "vlmsam_config.json"
ADAPTER_DIR = "adapter"
TRAINABLE_WEIGHTS = "trainable.safetensors"


@dataclass
class SegSample:
    """One training/evaluation sample: an image, a conversation and one target mask per ``[SEG]``.

    ``masks`` is ``(N, H, W) uint8`` in original pixels with 1 = object, 0 = background, 255 = ignore.
    """

    image: ImageSource
    turns: list[tuple[str, str]]
    masks: torch.Tensor
    name: str = ""


@dataclass
class SegOutput:
    loss: torch.Tensor
    ce_loss: torch.Tensor
    bce_loss: torch.Tensor
    dice_loss: torch.Tensor
    mask_logits: list[torch.Tensor]  # per sample, (N_i, H_i, W_i) in original pixels


class SegTokenModel(nn.Module):
    def __init__(self, vlm: nn.Module, processor: VlmProcessor, sam: SamBackend, config: SegTokenConfig):
        super().__init__()
        self.config = config
        self.processor = processor
        self.vlm = vlm
        self.sam_backend = sam
        self.sam = sam.model  # registered, so .to() / parameters() / state_dict() see it
        hidden = self._text_config().hidden_size
        prompt_dim = sam.model.config.prompt_encoder_config.hidden_size
        self.projection = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, prompt_dim))
        self.projection.to(next(vlm.parameters()).dtype)
        self._image: tuple | None = None
        self.vision_calls = 0

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
            "lm_head": base.get_output_embeddings(),
            "embed_tokens": base.get_input_embeddings(),
            "projection": self.projection,
            "sam_mask_decoder": self.sam.mask_decoder,
            "vision_tower": base.model.visual,
            "sam_image_encoder": self.sam.vision_encoder,
            "sam_prompt_encoder": self.sam.prompt_encoder,
        }

    def components(self) -> dict[str, list[nn.Parameter]]:
        """The parameters of every part that can train, by name (LoRA first)."""
        lora = [p for n, p in self.vlm.named_parameters() if ".lora_" in n]
        return {"lora": lora, **{name: list(module.parameters()) for name, module in self._parts().items()}}

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

    # ---- training -------------------------------------------------------------------------------

    def encode_sam(self, image) -> ImageEmbedding:
        if self.config.train_sam_image_encoder:
            pixels, original, resized = self.sam_backend.preprocess(image)
            emb = self.sam.vision_encoder(pixels.to(self.sam_backend.device, self.sam_backend.dtype)).last_hidden_state
            return ImageEmbedding(emb, original, resized)
        return self.sam_backend.encode(image)

    def forward(self, samples: list[SegSample]) -> SegOutput:
        """Losses for a batch of samples (CE on assistant tokens + BCE + Dice on masks)."""
        device = next(self.vlm.parameters()).device
        images = [load_image(s.image) for s in samples]
        encoded = [self.processor.encode(s.turns, img) for s, img in zip(samples, images)]
        pad = self.processor.tokenizer.pad_token_id
        length = max(len(e.input_ids) for e in encoded)
        input_ids = torch.full((len(samples), length), pad, dtype=torch.long)
        labels = torch.full((len(samples), length), -100, dtype=torch.long)
        attention = torch.zeros((len(samples), length), dtype=torch.long)
        for i, e in enumerate(encoded):  # right padding
            input_ids[i, : len(e.input_ids)] = e.input_ids
            labels[i, : len(e.labels)] = e.labels
            attention[i, : len(e.input_ids)] = 1
        out = self.vlm(
            **self.vlm_inputs(input_ids.to(device)),
            attention_mask=attention.to(device),
            pixel_values=torch.cat([e.pixel_values for e in encoded]).to(device),
            image_grid_thw=torch.cat([e.image_grid_thw for e in encoded]).to(device),
            labels=labels.to(device),
            output_hidden_states=True,
        )
        hidden = out.hidden_states[-1]
        bce = dice = hidden.new_zeros((), dtype=torch.float32)
        n_masks = 0
        logits_out = []
        for i, (sample, image) in enumerate(zip(samples, images)):
            positions = (input_ids[i] == self.config.seg_token_id).nonzero().flatten().to(device)
            targets = torch.as_tensor(sample.masks).to(device)
            if len(positions) != len(targets):
                raise ValueError(
                    f"sample {sample.name or i}: the answer holds {len(positions)} [SEG] token(s) but "
                    f"{len(targets)} target mask(s) were given"
                )
            embedding = self.encode_sam(image)
            logits, _ = self.masks_from_states(hidden[i, positions], embedding)
            logits_out.append(logits)
            if len(targets):
                bce = bce + sigmoid_bce_loss(logits, targets)
                dice = dice + dice_loss(logits, targets)
                n_masks += len(targets)
        bce = bce / (n_masks + 1e-8)
        dice = dice / (n_masks + 1e-8)
        c = self.config
        loss = c.ce_weight * out.loss + c.bce_weight * bce + c.dice_weight * dice
        return SegOutput(loss, out.loss.detach(), bce.detach(), dice.detach(), logits_out)

    # ---- inference --------------------------------------------------------------------------------

    @torch.no_grad()
    def set_image(self, image: ImageSource) -> None:
        """Run both image encoders once; later :meth:`segment` calls reuse their outputs."""
        image = load_image(image)
        key = self.sam_backend.set_image(image).key
        if self._image is not None and self._image[0] == key:
            return
        device = next(self.vlm.parameters()).device
        pixel_values, grid, n_tokens = self.processor.image_inputs(image)
        pixel_values, grid = pixel_values.to(device), grid.to(device)
        features = self._base_vlm().model.get_image_features(pixel_values, grid, return_dict=True)
        self.vision_calls += 1
        self._image = (key, pixel_values, grid, n_tokens, features)

    @torch.no_grad()
    def segment(self, request: str, image: ImageSource | None = None, *, max_new_tokens: int = 64,
                logits_processor=None) -> SegmentationResult:
        """Answer ``request`` about the set image (or ``image``) and draw one mask per ``[SEG]``."""
        t0 = time.perf_counter()
        if image is not None:
            self.set_image(image)
        if self._image is None:
            raise RuntimeError("no image is set: call set_image(image) or pass image=")
        t1 = time.perf_counter()
        tokens, states = self.generate_with_states(request, max_new_tokens=max_new_tokens, logits_processor=logits_processor)
        t2 = time.perf_counter()
        logits, iou = self.masks_from_states(states, self.sam_backend.embedding)
        t3 = time.perf_counter()
        return SegmentationResult(
            masks=(logits > MASK_THRESHOLD).cpu().numpy(),
            scores=iou.float().cpu().numpy(),
            text=self.processor.decode(tokens),
            timings={"encode_image": t1 - t0, "generate": t2 - t1, "decode_masks": t3 - t2},
        )

    def generate_with_states(self, request: str, *, max_new_tokens: int = 64, logits_processor=None, **generate_kwargs):
        """Greedy generation with the KV cache. Returns the new token ids ``(T,)`` and the final-layer
        hidden state of every ``[SEG]`` among them, read in the step where that ``[SEG]`` is fed back in.

        One token more than ``max_new_tokens`` is generated and dropped, so that a ``[SEG]`` emitted
        as the last kept token has been fed back in too. ``generate_kwargs`` override the defaults
        (the speed benchmark passes ``use_cache=False`` to measure what the cache saves).
        """
        _, pixel_values, grid, n_tokens, features = self._image
        device = pixel_values.device
        enc = self.processor.encode([(request, None)], image_inputs=(pixel_values, grid, n_tokens))
        input_ids = enc.input_ids[None].to(device)
        out = self.vlm.generate(
            **self.vlm_inputs(input_ids),
            attention_mask=torch.ones_like(input_ids),
            mm_encoder_outputs={"image": features},
            image_grid_thw=grid,
            **{"max_new_tokens": max_new_tokens + 1, "do_sample": False, "use_cache": True, **generate_kwargs},
            output_hidden_states=True,
            return_dict_in_generate=True,
            logits_processor=logits_processor,
            eos_token_id=self.processor.im_end,
            pad_token_id=self.processor.tokenizer.pad_token_id,
        )
        new = out.sequences[0, input_ids.shape[1]:]
        stop = (new == self.processor.im_end).nonzero()
        keep = min(int(stop[0]) if len(stop) else len(new), max_new_tokens)
        new = new[:keep]
        seg_steps = (new == self.config.seg_token_id).nonzero().flatten().tolist()
        # hidden_states[k + 1] is the step whose input is generated token k.
        states = [out.hidden_states[k + 1][-1][0, -1] for k in seg_steps]
        hidden = self._text_config().hidden_size
        return new, (torch.stack(states) if states else out.sequences.new_zeros((0, hidden), dtype=next(self.projection.parameters()).dtype))

    @torch.no_grad()
    def teacher_forced_states(self, request: str, answer_ids: torch.Tensor) -> torch.Tensor:
        """[SEG] states from one forward pass over prompt + ``answer_ids`` (the training read-out)."""
        _, pixel_values, grid, n_tokens, _ = self._image
        enc = self.processor.encode([(request, None)], image_inputs=(pixel_values, grid, n_tokens))
        ids = torch.cat([enc.input_ids.to(answer_ids.device), answer_ids])[None]
        out = self.vlm(**self.vlm_inputs(ids), pixel_values=pixel_values, image_grid_thw=grid, output_hidden_states=True)
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
                    if "lora_" not in key:
                        out[f"{name}.{key.replace('base_layer.', '')}"] = value.detach().contiguous().cpu()
        return out

    def save_pretrained(self, out_dir: str | Path) -> Path:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.config.save(out / CONFIG_NAME)
        state = self.trainable_state_dict()
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
        from safetensors.torch import load_file

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
        state = load_file(str(path / TRAINABLE_WEIGHTS))
        for name, module in model._parts().items():
            sub = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            if not sub:
                continue
            if hasattr(module, "base_layer"):  # peft wraps lm_head/embeddings it targets
                module = module.base_layer
            missing, unexpected = module.load_state_dict(sub, strict=False)
            if unexpected or (missing and name == "projection"):
                raise CheckpointError(f"{path}: {name} weights do not fit: missing {missing}, unexpected {unexpected}")
        model.apply_trainable()
        if device is not None:
            model.to(device)
        return model.eval()

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
        return self.save_pretrained(out)


def _resolve(name: str, base_dir: Path | None) -> str:
    if base_dir is not None and not Path(name).is_absolute() and (base_dir / name).exists():
        return str(base_dir / name)
    return name


def _load_vlm(name: str, base_dir: Path | None):
    from transformers import AutoConfig, AutoModelForImageTextToText

    source = _resolve(name, base_dir)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{source}: could not read a VLM config ({str(e).splitlines()[0]})") from None
    if config.model_type not in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        raise CheckpointError(f"{source}: is a '{config.model_type}' model; the [SEG] segmenter supports Qwen2-VL, Qwen2.5-VL and Qwen3-VL")
    return AutoModelForImageTextToText.from_pretrained(source)


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
