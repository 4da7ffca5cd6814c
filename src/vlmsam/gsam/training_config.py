"""The ``model`` section of a SAM 3 phrase-training config (``model.model_type: grounded``); light (no
torch), so that the design's registration imports nothing heavy. The trained checkpoint is a ``grounded``
segmenter whose one model is the SAM 3."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlmsam.seg_vlm.config import DeclaredParts


@dataclass
class Sam3TrainConfig(DeclaredParts):
    """Fine-tune a SAM 3 (``sam``: hub id or directory; ``tiny``: a fresh tiny one of the sizes below) on
    (image, noun phrase -> every instance) samples made from the data's annotations."""

    sam: str = "facebook/sam3"
    phrases_per_image: int = 6  # one vision pass serves them all
    negative_rate: float = 0.3  # phrases naming nothing: they teach the presence head
    score_threshold: float = 0.5  # the checkpoint's segmenter keeps instances above it
    train_vision: bool = True  # the ViT and its FPN
    train_text: bool = True  # the CLIP text encoder and its projection
    train_detector: bool = True  # geometry encoder, DETR encoder and decoder, scoring
    train_mask_decoder: bool = True
    # rates of their own, as Meta's fine-tuning (train.lr is the detector's): the ViT at vision_lr_scale × train.lr,
    # its block i of L further × vision_layer_decay^(L - i) (patch embedding ^(L + 1)); the text encoder at text_lr_scale
    vision_lr_scale: float = 1.0
    vision_layer_decay: float = 1.0
    text_lr_scale: float = 1.0
    decay_bias_and_norm: bool = False  # Meta's configs exempt '*bias*' and LayerNorm weights from weight decay
    # Meta's one-to-many (DAC) branch: each query also runs without self-attention and is matched one-to-many
    # (several queries per instance), which gives the decoder more positives to learn from (sam3_losses)
    dac: bool = False
    dac_masks: bool = True  # the copies' masks too, as Meta's o2m_mask_predict; false: their classes and boxes only
    # LoRA: adapters on the chosen parts' layers named in lora_targets; every base weight stays frozen
    use_lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "fc1", "fc2"])
    # sizes of sam: tiny
    tiny_image_size: int = 168
    tiny_patch: int = 14
    tiny_hidden: int = 64
    tiny_vit_layers: int = 4
    tiny_text_layers: int = 2
    tiny_queries: int = 16
    tiny_decoder_layers: int = 3
