"""The one typed config of the ``[SEG]``-token segmenter, saved with every checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from vlmsam.seg_vlm.config import DeclaredParts


@dataclass
class SegTokenConfig(DeclaredParts):
    """Defaults follow LISA / Qwen-SAM; every switch can be turned either way.

    ``vlm`` and ``sam`` name the base models (hub id or path; a relative path is taken relative
    to the checkpoint directory that holds this config).
    """

    vlm: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    sam: str = "facebook/sam-vit-huge"
    seg_token_id: int = -1
    # loss weights
    ce_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    # > 0: also pull each projected [SEG] embedding (MSE) towards a target in SAM's own terms. Off
    # in LISA, whose SAM is pre-trained; a [SEG] model trained from scratch (vlmsam-tiny) learns to
    # speak to SAM far faster with it. "region": the mean SAM image embedding over the target
    # (what it looks like to SAM; a RoPE-only VLM can say this); "point": SAM's prompt embedding
    # of a point on it (absolute coordinates, which such a VLM learns only slowly).
    prompt_target_weight: float = 0.0
    prompt_target: str = "region"
    # Weight of each answer's first token in the CE average: the decision ("[SEG]" or "There is no
    # ..."), one token among the many of an answer and of any caption conversation beside it.
    answer_start_weight: float = 1.0
    # > 0: answers that write numbers (grounding JSON) are taught with a Gaussian of this width (in
    # units of the number) over the whole-number tokens around each target instead of one-hot
    # (``losses.answer_weighted_ce``); 0: the usual CE.
    number_sigma: float = 0.0
    # > 0: one attention head of the language model (the first of layer ``grounding_layer``) is
    # taught where to look: at each [SEG], and at the token that decides each answer with targets,
    # its attention over the visual tokens is pulled (CE) towards the targets' share of each token;
    # where a dataset marks an answer as "nothing matches" (``meta["no_target"]``), the deciding
    # token is pulled to <|vision_start|> instead. A model trained from scratch otherwise finds
    # "the red circle" among the visual tokens only slowly; pre-trained VLMs already ground. The
    # language model runs eager attention from the first training forward on (SDPA returns no
    # attention weights); for inference it keeps its own.
    grounding_weight: float = 0.0
    grounding_layer: int = -1
    grounding_sink: bool = True  # "nothing matches" answers look at <|vision_start|> (False: unsupervised)
    # LoRA on the language layers only (never the vision tower)
    use_lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    # declared trainable parts (LoRA is governed by use_lora)
    train_language_model: bool = False  # every language-model weight (full fine-tune / from scratch)
    train_lm_head: bool = True
    train_embed_tokens: bool = True
    train_projection: bool = True
    train_sam_mask_decoder: bool = True
    train_vision_tower: bool = False
    train_sam_image_encoder: bool = False
    train_sam_prompt_encoder: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SegTokenConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"model_type"})
        if unknown:
            raise ValueError(f"unknown [SEG] model config keys: {unknown}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"model_type": "vlmsam_seg_token", **self.to_dict()}, indent=2))

    @classmethod
    def load(cls, path: Path) -> SegTokenConfig:
        return cls.from_dict(json.loads(path.read_text()))
