"""``vlmsam-tiny``, the bundled default: the real Qwen2.5-VL and SAM classes at small sizes,
trained from scratch on the synthetic scenes, shipped inside the package.

:func:`build_base` writes the untrained starting point (its own tokenizer, trained on the request
vocabulary); ``configs/vlmsam_tiny.yaml`` trains it with ``vlmsam train``; :func:`export` turns the
trained checkpoint into the standalone directory the package ships (``make tiny-model`` runs all
of it; tools/bundles.py shares the other defaults' identical parts with it).
"""

from __future__ import annotations

from pathlib import Path

from vlmsam.engine.registry import DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME  # noqa: F401  (where export writes)

IMAGE_PIXELS = 128 * 128  # about 8 x 8 = 64 visual tokens with 8-pixel patches merged 2 x 2
VISION_PATCH = 8


def request_corpus() -> str:
    """Every word the scenes, prompts and answers use, so the tokenizer has whole-word tokens."""
    from vlmsam.data import prompts
    from vlmsam.data.synth import CAPTION_QUESTION, COLORS, PHRASE, RELATIONS, SENTENCE, SHAPES

    lines = [prompts.SHORT_QUESTIONS, prompts.LONG_QUESTIONS, prompts.ANSWERS, prompts.EXPLANATORY_QUESTIONS,
             [prompts.MULTI_QUESTION, prompts.MULTI_ANSWER, prompts.EVAL_LONG, prompts.EVAL_SHORT, "You are a helpful assistant.",
              "system user assistant", "There is no such object in this image."]]
    words = [*COLORS, *SHAPES, *[s + "s" for s in SHAPES], *RELATIONS, "largest smallest leftmost rightmost topmost bottommost",
             "colour type shape shapes odd one out appears only once"]
    text = [" ".join(x for group in lines for x in group), " ".join(words)]
    text += [t for group in (*PHRASE.values(), *SENTENCE.values()) for t in group]
    text.append(f"{CAPTION_QUESTION} There are 2 shapes: a red circle and an orange star. There are 3 4 5 6 shapes:")
    for c in COLORS:
        for s in SHAPES:
            text.append(f"the {c} {s}. There is no {c} {s} in this image. all the {c} shapes, all the {s}s.")
    return "\n".join(text * 3)


def build_base(out_dir: str | Path, seed: int = 0) -> Path:
    """The untrained vlmsam-tiny: ``out_dir/vlm`` (Qwen2.5-VL) and ``out_dir/sam`` (SAM)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vlmsam.sam.tiny import build_tiny_sam
    from vlmsam.vlm.processor import VlmProcessor
    from vlmsam.vlm.tiny import build_tokenizer, tiny_config

    out = Path(out_dir)
    tokenizer = build_tokenizer(request_corpus(), vocab_size=700)
    config = tiny_config("qwen2_5_vl", tokenizer, text_hidden=160, text_layers=4, vision_hidden=96, vision_depth=4)
    config.vision_config.patch_size = VISION_PATCH
    config.vision_config.window_size = VISION_PATCH * 2 * 4  # 4 x 4 merged tokens
    config.vision_config.fullatt_block_indexes = [1, 3]
    config.vision_config.num_heads = 4
    torch.manual_seed(seed)
    vlm = Qwen2_5_VLForConditionalGeneration(config)
    image_processor = Qwen2VLImageProcessorPil(patch_size=VISION_PATCH, merge_size=2, temporal_patch_size=2,
                                               size={"shortest_edge": IMAGE_PIXELS, "longest_edge": IMAGE_PIXELS})
    vlm.save_pretrained(out / "vlm")
    VlmProcessor(image_processor, tokenizer).save_pretrained(out / "vlm")
    build_tiny_sam(seed, image_size=128, patch_size=8, hidden=64, prompt_dim=64, layers=3).save_pretrained(out / "sam")
    return out


def _run_checkpoint(run: Path, which: str) -> Path:
    """A run's last checkpoint (``which="last"``) or the named one (``step_001500``)."""
    from vlmsam.train.checkpoint import list_checkpoints

    checkpoints = list_checkpoints(run)
    if not checkpoints:
        raise FileNotFoundError(f"{run}: no checkpoints")
    return checkpoints[-1] if which == "last" else run / "checkpoints" / which


def _pretrain_record(part: str | Path) -> dict | None:
    """The ``pretrain.json`` a pre-training command wrote beside a model (None where there is none)."""
    import json

    record = Path(part) / "pretrain.json"
    return json.loads(record.read_text()) if record.is_file() else None


def export(checkpoint: str | Path, out_dir: str | Path = DEFAULT_MODEL_DIR, *, which: str = "best", data_seed: int = 0,
           n_scenes: int = 25000) -> Path:
    """A trained checkpoint -> a standalone model directory (full weights, no references), with the
    training config and where its data came from. Given a run directory, its best checkpoint by
    validation gIoU (``best.json``) is taken, or with ``which="last"`` its last one; given a
    checkpoint, that one."""
    import json
    import shutil

    from vlmsam.seg_token import SegTokenModel
    from vlmsam.train.checkpoint import list_checkpoints

    checkpoint, out = Path(checkpoint), Path(out_dir)
    choice = f"{checkpoint.name}, as named to export"
    if which == "last" and list_checkpoints(checkpoint):
        checkpoint, choice = list_checkpoints(checkpoint)[-1], "the run's last checkpoint"
    elif (checkpoint / "best.json").is_file():
        checkpoint = checkpoint / json.loads((checkpoint / "best.json").read_text())["checkpoint"]
        choice = "best validation gIoU of the run (200 val scenes every 500 steps)"
    if out.exists():
        from tools.bundles import unshare_dependents

        unshare_dependents(out)  # the bundles made from this one keep the parts they were made with
        shutil.rmtree(out)
    model = SegTokenModel.from_pretrained(checkpoint)
    sam_record, vision_record = _pretrain_record(model.config.sam), _pretrain_record(model.config.vlm)  # before save_merged renames the bases
    model.save_merged(out)
    shutil.copy(checkpoint / "config.yaml", out / "train_config.yaml")
    (out / "provenance.json").write_text(json.dumps({
        "trained_from": "scratch (configs/vlmsam_tiny.yaml, make tiny-model)",
        "checkpoint_step": int(checkpoint.name.split("_")[-1]),
        "checkpoint_choice": choice,
        "sam_pretraining": sam_record,
        "vision_pretraining": vision_record,
        "data": f"vlmsam data synth --n {n_scenes} --seed {data_seed} (train split)",
        "evaluation": "vlmsam data synth --n 5000 --seed 7 (test split, a seed not used in training) -> eval/metrics.json",
    }, indent=2))
    return out


BOX_PROMPT_DIR_NAME = "vlmsam-tiny-grounding"


def export_box_prompt(run: str | Path, out_dir: str | Path | None = None, *, which: str = "last") -> Path:
    """The box_prompt design's offline default from a grounding run (configs/box_prompt_tiny.yaml): the
    run's VLM merged into a plain transformers directory, vlmsam-tiny's SAM beside it, the design's config,
    the training config and provenance."""
    import json
    import shutil

    from vlmsam.engine.registry import load

    run = Path(run)
    checkpoint = _run_checkpoint(run, which)
    out = Path(out_dir) if out_dir else DEFAULT_MODEL_DIR.parent / BOX_PROMPT_DIR_NAME
    # A box_prompt run's checkpoint is itself a box_prompt checkpoint (its config carries the SAM prompt
    # settings: multimask off and points alone, see configs/box_prompt_tiny.yaml for why).
    segmenter = load(checkpoint)
    if out.exists():
        shutil.rmtree(out)
    segmenter.save_pretrained(out)
    shutil.copy(run / "config.yaml", out / "train_config.yaml")
    import yaml

    started, sam = (yaml.safe_load((run / "config.yaml").read_text())["model"][k] for k in ("vlm", "sam"))
    (out / "provenance.json").write_text(json.dumps({
        "design": "box_prompt",
        "made_by": "make box-prompt-model: configs/box_prompt_tiny.yaml (vlmsam-tiny's VLM merged, one token per number "
                   "10..256) stopped at step 1,500, exported, then configs/box_prompt_tiny_stage2.yaml"
                   + (", exported, then configs/box_prompt_tiny_phrasing.yaml (make box-prompt-model-phrasing)"
                      if run.name.endswith("-phrasing") else ""),
        "run": str(run), "checkpoint": checkpoint.name, "this_run_started_from": started,
        "sam": f"the run's frozen SAM ({sam}), unchanged",
        "answers": "Qwen2.5-VL grounding JSON (bbox_2d, point_2d) in the processor's resized frame"}, indent=2))
    return out


def add_number_tokens(model_dir: str | Path, up_to: int) -> int:
    """Give every integer ``10..up_to`` a token of its own in the VLM at ``model_dir`` (a merged
    checkpoint: its ``vlm/`` and top-level tokenizer). The box_prompt default answers coordinates in a
    frame of at most ``up_to`` pixels; one token per coordinate is one decision for a tiny model instead
    of two or three digits in a row (Qwen's own tokenizer splits digits; the text is the same either
    way, so answers parse alike). New embeddings start at the mean of the existing ones. Returns the
    number of tokens added."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    model_dir = Path(model_dir)
    vlm_dir = model_dir / "vlm"
    numbers = [str(n) for n in range(10, up_to + 1)]
    added = 0
    for where in (vlm_dir, model_dir):
        if (where / "tokenizer.json").exists():
            tokenizer = AutoTokenizer.from_pretrained(where)
            added = tokenizer.add_tokens(numbers)
            tokenizer.save_pretrained(where)
    tokenizer = AutoTokenizer.from_pretrained(vlm_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(vlm_dir)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.save_pretrained(vlm_dir)
    return added


LLMSEG_DIR_NAME = "vlmsam-tiny-llmseg"


def export_llmseg(run: str | Path, out_dir: str | Path | None = None, *, which: str = "last",
                  select_single: bool | None = None) -> Path:
    """The proposal_select design's offline default from an llmseg run (configs/llmseg_tiny.yaml): the
    checkpoint's head (and whatever of the VLM it trained), with the VLM, the proposing SAM and DINOv2 the
    run named copied beside it and named relative to the bundle, the training config and provenance.
    ``select_single`` sets the inference rule (the best proposal, or the union above the threshold)."""
    import json
    import shutil

    import yaml

    from vlmsam.proposal_select.llmseg import LlmSegModel

    run = Path(run)
    checkpoint = _run_checkpoint(run, which)
    out = Path(out_dir) if out_dir else DEFAULT_MODEL_DIR.parent / LLMSEG_DIR_NAME
    model = LlmSegModel.from_pretrained(checkpoint)
    if model.config.use_lora or model.config.train_language_model:
        raise ValueError("export_llmseg bundles a frozen VLM as it was named; merge a trained one first")
    if out.exists():
        shutil.rmtree(out)
    parts = {"vlm": model.config.vlm, "sam": model.config.sam, "dinov2": model.config.dinov2}
    for name, source in parts.items():
        shutil.copytree(source, out / name, ignore=shutil.ignore_patterns("pretrain_head.safetensors"))
        setattr(model.config, name, name)
    model.config.proposals = ""  # training input only
    if select_single is not None:
        model.config.select_single = select_single
    model.save_pretrained(out)
    shutil.copy(run / "config.yaml", out / "train_config.yaml")
    started = yaml.safe_load((run / "config.yaml").read_text())["model"]
    sam_log, dino_log = _pretrain_record(parts["sam"]) or {}, _pretrain_record(parts["dinov2"]) or {}
    (out / "provenance.json").write_text(json.dumps({
        "design": "proposal_select", "selector": "llmseg",
        "made_by": "make llmseg-model: configs/llmseg_tiny.yaml over `vlmsam proposals` of build/llmseg/synth"
                   + (", exported, then configs/llmseg_tiny_phrasing.yaml over vlmsam-tiny after its wording stage "
                      "(make llmseg-model-phrasing)" if run.name.endswith("-phrasing") else ""),
        "run": str(run), "checkpoint": checkpoint.name, "started_from": {k: started.get(k) for k in ("vlm", "sam", "dinov2")},
        "vlm": "vlmsam-tiny's VLM as installed when the run started, merged, frozen (unchanged)",
        "sam": "vlmsam-tiny's SAM after `python -m tools.pretrain sam --multimask` (multimask outputs and IoU head trained)",
        "sam_pretrain": {k: sam_log.get(k) for k in ("steps", "lr", "val_iou", "val_multimask_best_iou", "background_share",
                                                     "point_share", "freeze_image_encoder")},
        "dinov2": "a tiny transformers Dinov2Model pre-trained here with a supervised dense objective "
                  "(tools/pretrain_dinov2.py), frozen; not Meta's DINOv2 and not self-supervised",
        "dinov2_pretrain": {k: dino_log.get(k) for k in ("steps", "hidden", "layers", "patch", "size", "val_colour_acc", "val_kind_acc")},
        "inference": {"select_single": model.config.select_single},
    }, indent=2))
    return out


def start_point(bundle: str | Path, out_dir: str | Path) -> Path:
    """A trained vlmsam-tiny as the start of a fine-tuning run: merged (``vlm/``, ``sam/``, the projection),
    with its provenance and training config kept beside it as ``base_*`` for the export after the run."""
    import shutil

    from vlmsam.seg_token import SegTokenModel

    bundle, out = Path(bundle), Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    SegTokenModel.from_pretrained(bundle).save_merged(out)
    for name in ("provenance.json", "train_config.yaml"):
        shutil.copy(bundle / name, out / f"base_{name}")
    return out


def export_phrasing(run: str | Path, start: str | Path, out_dir: str | Path, *, which: str = "last") -> Path:
    """vlmsam-tiny after its wording stage (configs/vlmsam_tiny_phrasing.yaml): the run's checkpoint merged into
    a standalone directory, its training config, the base's training config and a provenance that holds the
    base's own (the five stages before)."""
    import json
    import shutil

    from vlmsam.seg_token import SegTokenModel

    run, start, out = Path(run), Path(start), Path(out_dir)
    checkpoint = _run_checkpoint(run, which)
    if out.exists():
        shutil.rmtree(out)
    SegTokenModel.from_pretrained(checkpoint).save_merged(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        (out / "vlm" / name).unlink()  # the same files as at the bundle's root, where every loader reads them
    shutil.copy(run / "config.yaml", out / "train_config.yaml")
    shutil.copy(start / "base_train_config.yaml", out / "train_config_base.yaml")
    (out / "provenance.json").write_text(json.dumps({
        "trained_from": "vlmsam-tiny as configs/vlmsam_tiny.yaml made it (make tiny-model, stages 1-5: 'base' below), "
                        "then fine-tuned on requests in the rich grammar's wordings (configs/vlmsam_tiny_phrasing.yaml)",
        "checkpoint_step": int(checkpoint.name.split("_")[-1]),
        "checkpoint_choice": "the run's last checkpoint" if which == "last" else f"{which}, as named to export",
        "data": "vlmsam data synth --n 25000 --seed 0 --phrasing rich (train split); each scene's further requests "
                "in the generator's own words or the rich grammar's, half and half",
        "evaluation": "vlmsam data synth --n 5000 --seed 7 [--phrasing rich|heldout] (test split) -> eval/metrics[-rich|-heldout].json",
        "settings": stage_settings(run / "config.yaml"),  # what this stage ran with; the stages chain, so each records its own
        "base": json.loads((start / "base_provenance.json").read_text()),
    }, indent=2))
    return out


def stage_settings(config_yaml: str | Path) -> dict:
    """A run's request options (``data.synth_*``) and its seed, length and rate: what tells one stage of a chain from
    the next in a provenance (each starts from the bundle installed before it, so where it started says nothing)."""
    import yaml

    config = yaml.safe_load(Path(config_yaml).read_text())
    train = config.get("train", {})
    return {"data": {k: v for k, v in config.get("data", {}).items() if k.startswith("synth_")},
            "train": {k: train.get(k) for k in ("seed", "epochs", "steps_per_epoch", "stop_at_step", "batch_size", "lr")}}
