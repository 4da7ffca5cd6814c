"""The ``model`` section of a ``box_prompt`` training config; light (no torch), so that the design's
registration imports nothing heavy. The segmenter's settings (``style`` .. ``max_new_tokens``) are written
into every checkpoint, which ``vlmsam segment --model`` then loads as the box_prompt design."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlmsam.seg_vlm.config import DeclaredParts


@dataclass
class BoxPromptTrainConfig(DeclaredParts):
    """The VLM is taught to answer the box_prompt request in its grounding format (``data.synth_answer_format:
    grounding``); SAM is not trained (it draws the answers at validation and in the checkpoint)."""

    vlm: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    sam: str = "facebook/sam-vit-huge"
    # the segmenter the checkpoint is (box_prompt/segmenter.py)
    style: str = "qwen2_5_vl"
    union: bool = False
    multimask: bool = True
    prompt: str = "box+point"
    max_new_tokens: int = 128
    seg_token_id: int = -1  # the tokenizer's [SEG], if it has one (grounding answers hold none)
    # Weight of each answer's first token in the CE average: the decision ('[{"bbox_2d"' or "There is no ...").
    answer_start_weight: float = 1.0
    # > 0: numbers in answers are taught with a Gaussian of this width over the number tokens around each
    # target (seg_vlm/losses.py); 0: the usual CE.
    number_sigma: float = 0.0
    # > 0: the first head of layer ``grounding_layer`` is taught to look where each coordinate is read
    # from, and each answer's deciding token at its objects (seg_vlm/grounding.py, training.py).
    grounding_weight: float = 0.0
    grounding_layer: int = -1
    grounding_sink: bool = True  # "nothing matches" answers look at <|vision_start|> (False: unsupervised)
    use_lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    train_language_model: bool = False  # every language-model weight (then use_lora: false)
    train_lm_head: bool = True
    train_embed_tokens: bool = True
    train_vision_tower: bool = False
