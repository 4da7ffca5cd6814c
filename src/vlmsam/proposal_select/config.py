"""The ``model`` section of a ``proposal_select`` (llmseg) training config and its checkpoint's config; light
(no torch), so that the design's registration imports nothing heavy."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from vlmsam.errors import CheckpointError
from vlmsam.seg_vlm.config import DeclaredParts


@dataclass
class LlmSegConfig(DeclaredParts):
    """The ``model`` section of a ``proposal_select`` training config (and the checkpoint's config)."""

    vlm: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    sam: str = "facebook/sam-vit-huge"  # proposes at inference (training reads ``proposals``)
    dinov2: str = "facebook/dinov2-large"
    dino_size: int = 448  # DINOv2 sees the whole image resized to this square (a multiple of its patch)
    proposals: str = ""  # a directory written by `vlmsam proposals` over the training datasets
    max_proposals: int = 50  # the largest K proposals of an image are scored (LLM-Seg: 50)
    amg: dict = field(default_factory=dict)  # inference: the automatic mask generator's settings (AmgConfig fields)
    head_dim: int = 256
    head_depth: int = 2
    head_heads: int = 8
    head_geometry: bool = False  # add each proposal's box and size to its pooled features (not in LLM-Seg)
    select_threshold: float = 0.5  # inference: the union of proposals with predicted IoU above this
    select_single: bool = False  # inference: only the best proposal
    seg_token_id: int = -1
    ce_weight: float = 1.0
    selection_weight: float = 1.0  # alignment KL + 50 x weighted IoU MSE (LLM-Seg's weights inside)
    use_lora: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    train_language_model: bool = False
    train_lm_head: bool = True
    train_embed_tokens: bool = True
    train_head: bool = True

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"model_type": "vlmsam_proposal_select", "selector": "llmseg", **asdict(self)}, indent=2))

    @classmethod
    def from_dict(cls, data: dict) -> LlmSegConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"model_type", "selector"})
        if unknown:
            raise CheckpointError(f"unknown llmseg config keys: {unknown}")
        return cls(**{k: v for k, v in data.items() if k in known})
