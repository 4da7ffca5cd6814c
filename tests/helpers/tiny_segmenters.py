"""A tiny builder for every registered segmenter design, so the contract suite covers each of them.

Each builder takes a folder to save base models in and returns a ready segmenter of the real
classes (random weights, moved off their initial values so answers and masks are not trivial).
"""

from __future__ import annotations

from pathlib import Path

import torch


def _perturb(module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def seg_token(root: Path):
    from vlmsam.sam.tiny import build_tiny_sam
    from vlmsam.seg_token import SegTokenConfig, SegTokenModel
    from vlmsam.seg_token.segmenter import SegTokenSegmenter
    from vlmsam.vlm.tiny import save_tiny_vlm

    build_tiny_sam().save_pretrained(root / "sam")
    vlm = save_tiny_vlm(root / "vlm", "qwen2_5_vl")
    torch.manual_seed(0)
    model = SegTokenModel.build(SegTokenConfig(vlm=str(vlm), sam=str(root / "sam"), lora_r=4, lora_alpha=8))
    _perturb(model)
    return SegTokenSegmenter(model, max_new_tokens=8)


def box_prompt(root: Path):
    from vlmsam.box_prompt.segmenter import BoxPromptSegmenter
    from vlmsam.sam.backend import SamBackend
    from vlmsam.sam.tiny import build_tiny_sam
    from vlmsam.vlm.runtime import VlmRuntime
    from vlmsam.vlm.tiny import save_tiny_vlm

    torch.manual_seed(0)
    build_tiny_sam().save_pretrained(root / "sam")
    vlm = save_tiny_vlm(root / "vlm", "qwen2_5_vl")
    return BoxPromptSegmenter(VlmRuntime.load(vlm), SamBackend.from_pretrained(root / "sam"), max_new_tokens=8)


BUILDERS = {"seg_token": seg_token, "box_prompt": box_prompt}


def save_tiny_grounding_dino(path: Path) -> Path:
    """A tiny random Grounding DINO of the real class, with a BERT word-piece vocabulary of our words."""
    from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoProcessor, SwinConfig)
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

    path.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "a", "the", "red", "blue", "green", "circle",
             "square", "triangle", "star", "cat", "dog", "box", "shape", "airplane"]
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    backbone = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4, image_size=64,
                          out_indices=[2, 3, 4], out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)
    config = GroundingDinoConfig(backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1, decoder_layers=2,
                                 encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                 num_queries=20, num_feature_levels=3, encoder_n_points=2, decoder_n_points=2,
                                 max_text_len=32, use_timm_backbone=False)
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(path)
    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96}),
                                       tokenizer=BertTokenizer(str(path / "vocab.txt")))
    processor.save_pretrained(path)
    return path


def grounded(root: Path):
    from vlmsam.engine.registry import design
    from vlmsam.engine.spec import BuildSpec
    from vlmsam.sam.tiny import build_tiny_sam

    build_tiny_sam().save_pretrained(root / "sam")
    # thresholds 0: a random detector scores low, and the contract suite wants boxes to check
    seg = design("grounded")(BuildSpec(sam=str(root / "sam"), detector=str(save_tiny_grounding_dino(root / "gd"))))
    seg.box_threshold = seg.text_threshold = 0.0
    return seg


def gsam(root: Path):
    from vlmsam.engine.registry import design
    from vlmsam.engine.spec import BuildSpec
    from vlmsam.sam.tiny import build_tiny_sam
    from vlmsam.vlm.tiny import save_tiny_vlm

    build_tiny_sam().save_pretrained(root / "sam")
    vlm = save_tiny_vlm(root / "vlm", "qwen2_5_vl")
    seg = design("gsam")(BuildSpec(vlm=str(vlm), sam=str(root / "sam"), detector=str(save_tiny_grounding_dino(root / "gd")),
                                   max_new_tokens=8))
    seg.box_threshold = seg.text_threshold = 0.0
    return seg


def grounded_sam3(root: Path):
    """``grounded`` with a tiny SAM 3 as its one model (no detector)."""
    from vlmsam.engine.registry import design
    from vlmsam.engine.spec import BuildSpec
    from vlmsam.sam.sam3_tiny import build_tiny_sam3

    build_tiny_sam3(seed=0).save_pretrained(root / "sam3")
    seg = design("grounded")(BuildSpec(sam=str(root / "sam3")))
    seg.score_threshold = 0.0  # a random SAM 3 scores low: keep its instances, so results have masks to check
    return seg


BUILDERS.update(grounded=grounded, gsam=gsam, grounded_sam3=grounded_sam3)


def save_tiny_sam2(path: Path) -> Path:
    """A tiny random SAM 2 (transformers' Sam2Model: Hiera backbone, 1024 input) saved to ``path``."""
    from transformers import Sam2Config, Sam2Model
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig

    backbone = Sam2HieraDetConfig(hidden_size=16, blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[16, 32, 64, 128],
                                  num_attention_heads_per_stage=[1, 1, 1, 1], global_attention_blocks=[3],
                                  window_size_per_stage=[8, 4, 14, 7], num_attention_heads=1)
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[128, 64, 32, 16], fpn_hidden_size=32)
    config = Sam2Config(vision_config=vision, prompt_encoder_config=dict(hidden_size=32),
                        mask_decoder_config=dict(hidden_size=32, iou_head_hidden_dim=32, mlp_dim=64, num_attention_heads=2))
    torch.manual_seed(0)
    Sam2Model(config).save_pretrained(path)
    return path


def permissive_amg():
    """A small grid with the filters off: a random SAM's scores are low, and the suites want proposals."""
    from vlmsam.sam.amg import AmgConfig

    return AmgConfig(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


def proposal_select(root: Path):
    from vlmsam.proposal_select.segmenter import MarksSegmenter
    from vlmsam.sam.backend import SamBackend
    from vlmsam.sam.tiny import build_tiny_sam
    from vlmsam.vlm.runtime import VlmRuntime
    from vlmsam.vlm.tiny import save_tiny_vlm

    torch.manual_seed(0)
    build_tiny_sam().save_pretrained(root / "sam")
    vlm = save_tiny_vlm(root / "vlm", "qwen2_5_vl")
    return MarksSegmenter(VlmRuntime.load(vlm), SamBackend.from_pretrained(root / "sam"), amg=permissive_amg(), max_proposals=8,
                                   max_new_tokens=8)


BUILDERS.update(proposal_select=proposal_select)


def save_tiny_dinov2(path: Path) -> Path:
    """A tiny random DINOv2 (transformers' Dinov2Model) and its image processor, saved to ``path``."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             patch_size=8, image_size=64)).save_pretrained(path)
    BitImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(path)
    return path


def llmseg(root: Path):
    """proposal_select with the trained selector (random here): a [SEG] VLM, DINOv2 and the head."""
    from dataclasses import asdict

    from vlmsam.proposal_select.llmseg import LlmSegConfig, LlmSegModel
    from vlmsam.proposal_select.segmenter import llmseg_segmenter
    from vlmsam.sam.tiny import build_tiny_sam
    from vlmsam.vlm.tiny import save_tiny_vlm

    torch.manual_seed(0)
    build_tiny_sam().save_pretrained(root / "sam")
    vlm = save_tiny_vlm(root / "vlm", "qwen2_5_vl")
    config = LlmSegConfig(vlm=str(vlm), sam=str(root / "sam"), dinov2=str(save_tiny_dinov2(root / "dino")), dino_size=64,
                          max_proposals=8, head_dim=32, head_heads=2, lora_r=4, lora_alpha=8, amg=asdict(permissive_amg()))
    model = LlmSegModel.build(config)
    _perturb(model)
    return llmseg_segmenter(model.eval(), max_new_tokens=8)


BUILDERS.update(llmseg=llmseg)


def agent(root: Path):
    """The agent loop with a tiny random VLM (local: its conversation reuses the KV cache) and a tiny SAM 3."""
    from vlmsam.engine.registry import design
    from vlmsam.engine.spec import BuildSpec
    from vlmsam.sam.sam3_tiny import build_tiny_sam3
    from vlmsam.vlm.tiny import save_tiny_vlm

    build_tiny_sam3(seed=0).save_pretrained(root / "sam3")
    vlm = save_tiny_vlm(root / "vlm", "qwen2_5_vl")
    seg = design("agent")(BuildSpec(vlm=str(vlm), sam=str(root / "sam3"), max_new_tokens=8))
    seg.max_turns, seg.score_threshold = 2, 0.0  # a random VLM never finishes: two turns show the loop
    return seg


BUILDERS.update(agent=agent)


def agent_served(root: Path):
    """The agent loop over a served VLM (a real OpenAI-compatible server on 127.0.0.1 whose answer is a
    function of the conversation: ask for "shapes", then choose candidate 1), so its results hold masks."""
    import atexit

    from tests.helpers.scripted_vlm_server import call, launch
    from vlmsam.engine.registry import design
    from vlmsam.engine.spec import BuildSpec
    from vlmsam.sam.sam3_tiny import build_tiny_sam3

    build_tiny_sam3(seed=0).save_pretrained(root / "sam3")
    server, url, _ = launch([["numbered 1 to", call("select_masks_and_return", final_answer_masks=[1])],
                             ["", call("segment_phrase", text_prompt="shapes")]], root, "--policy")
    atexit.register(server.kill)
    seg = design("agent")(BuildSpec(vlm="scripted", vlm_endpoint=url, sam=str(root / "sam3")))
    seg.score_threshold = 0.0  # random SAM 3 weights score low: keep candidates to choose from
    return seg


BUILDERS.update(agent_served=agent_served)


def save_tiny_seg_checkpoint(root: Path) -> Path:
    """Tiny base models in ``root/sam`` and ``root/vlm`` and a [SEG] checkpoint built on them in ``root/ckpt``."""
    from vlmsam.sam.tiny import build_tiny_sam
    from vlmsam.seg_token import SegTokenConfig, SegTokenModel
    from vlmsam.vlm.tiny import save_tiny_vlm

    build_tiny_sam().save_pretrained(root / "sam")
    vlm = save_tiny_vlm(root / "vlm", "qwen2_5_vl")
    SegTokenModel.build(SegTokenConfig(vlm=str(vlm), sam=str(root / "sam"), lora_r=4)).save_pretrained(root / "ckpt")
    return root / "ckpt"


def brightest(root: Path):
    """The minimal design defined in tests/helpers/minimal_design.py, registered through the public API."""
    from tests.helpers.minimal_design import DESIGN
    from vlmsam.engine import BuildSpec, register

    return register(DESIGN)(BuildSpec())


BUILDERS.update(brightest=brightest)
