"""``vlmsam sam`` (prompt SAM with boxes/points), ``vlmsam convert-sam`` (Meta .pth -> transformers)
``vlmsam pretrain-sam`` (promptable pre-training of a SAM built from scratch) and
``vlmsam pretrain-vision`` (dense pre-training of a from-scratch VLM vision tower)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vlmsam.errors import PromptError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sam",
        help="segment an image with SAM from box and/or point prompts",
        description="Prompt Segment Anything with boxes and/or points (original-image pixels). "
        "Several --box flags give several masks; --point flags are combined into one prompt, or "
        "paired with a single --box.",
    )
    p.add_argument("image", help="image path or http(s) URL")
    p.add_argument("--sam", required=True, help="Meta .pth file (sam_vit_h_4b8939.pth), transformers directory, or hub id (facebook/sam-vit-huge)")
    p.add_argument("--box", action="append", default=[], metavar="X1,Y1,X2,Y2", help="box prompt, XYXY in pixels (repeatable)")
    p.add_argument("--point", action="append", default=[], metavar="X,Y", help="point prompt in pixels (repeatable)")
    p.add_argument("--point-label", action="append", type=int, default=None, metavar="0|1",
                   help="label of each --point in order: 1 foreground (default), 0 background")
    p.add_argument("--multimask", action=argparse.BooleanOptionalAction, default=False,
                   help="let SAM propose 3 masks per prompt and keep the best (default: off)")
    p.add_argument("--out", default="outputs", help="output directory (default: outputs)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    p.set_defaults(run=run_sam)

    c = sub.add_parser(
        "convert-sam",
        help="convert a Meta SAM .pth checkpoint to a transformers directory (safetensors)",
        description="Read one of Meta's sam_vit_{b,l,h}_*.pth files safely (weights_only) and save "
        "it as a transformers SamModel directory that --sam accepts and SamModel.from_pretrained loads.",
    )
    c.add_argument("checkpoint", help="Meta .pth file")
    c.add_argument("out_dir", help="directory to write config.json, model.safetensors and the preprocessing config")
    c.set_defaults(run=run_convert)

    t = sub.add_parser(
        "pretrain-sam",
        help="pre-train a from-scratch SAM on synthetic scenes (point/box prompt -> object mask)",
        description="SAM's own task on `vlmsam data synth` scenes: a point or a box on one visible shape in, "
        "its mask out, every part trained. vlmsam-tiny's SAM starts here, as real [SEG] models start "
        "from Meta's SAM. Prints the held-out IoU; writes a transformers SamModel directory.",
    )
    t.add_argument("sam", help="SAM directory to start from (e.g. the untrained vlmsam-tiny base)")
    _pretrain_arguments(t, "the pre-trained SamModel", steps=3000, batch="images per step, 3 shapes each (default 16)",
                        seed="prompt sampling and initialisation seed")
    t.set_defaults(run=run_pretrain)

    v = sub.add_parser(
        "pretrain-vision",
        help="pre-train a from-scratch VLM vision tower on synthetic scenes (each visual token names its colour and shape)",
        description="Dense pre-training on `vlmsam data synth` scenes: a linear head on every visual token "
        "(one merged cell) predicts the share of each colour and shape kind it shows, and where the cell is; the vision tower "
        "and merger are trained; the head is saved beside the VLM (pretrain_head.safetensors), not in it. vlmsam-tiny's VLM starts here, as real VLMs start from "
        "a pre-trained vision encoder. Prints held-out accuracies; writes the whole VLM directory.",
    )
    v.add_argument("vlm", help="Qwen-VL directory to start from (e.g. the untrained vlmsam-tiny base)")
    _pretrain_arguments(v, "the VLM with its pre-trained vision tower", steps=3000, batch="images per step (default 32)",
                        seed="sampling and head initialisation seed")
    v.add_argument("--kind-weight", type=float, default=argparse.SUPPRESS,
                   help="weight of the shape-kind loss against the colour loss (default 1)")
    v.add_argument("--position-weight", type=float, default=argparse.SUPPRESS,
                   help="weight of each token's position (MSE, image fractions) (default 10)")
    v.set_defaults(run=run_pretrain_vision)


def _pretrain_arguments(p: argparse.ArgumentParser, output: str, *, steps: int, batch: str, seed: str) -> None:
    """The options both pre-training commands share. Their defaults live in the config classes
    (importing those here would load transformers for every command); the help states them and a
    test keeps the two equal."""
    p.add_argument("--data", required=True, help="directory written by `vlmsam data synth --out`")
    p.add_argument("--out", required=True, help=f"directory for {output}")
    p.add_argument("--steps", type=int, default=argparse.SUPPRESS, help=f"optimiser steps (default {steps})")
    p.add_argument("--batch-size", type=int, default=argparse.SUPPRESS, help=batch)
    p.add_argument("--lr", type=float, default=argparse.SUPPRESS, help="peak AdamW rate, cosine decay (default 0.002)")
    p.add_argument("--seed", type=int, default=argparse.SUPPRESS, help=f"{seed} (default 0)")


def _given(args: argparse.Namespace) -> dict:
    """The pre-training options given on the command line (the rest keep the config's defaults)."""
    return {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "seed", "kind_weight", "position_weight") if hasattr(args, k)}


def run_pretrain(args: argparse.Namespace) -> int:
    from vlmsam.errors import CheckpointError
    from vlmsam.sam.pretrain import PretrainConfig, pretrain_sam

    if not Path(args.sam).is_dir():
        raise CheckpointError(f"{args.sam}: not a SAM directory")
    config = PretrainConfig(**_given(args))
    log = pretrain_sam(args.sam, args.data, args.out, config)
    print(f"pre-trained SAM: held-out IoU {log['val_iou']:.3f} (point/box prompts, {config.steps} steps) -> {args.out}")
    return 0


def run_pretrain_vision(args: argparse.Namespace) -> int:
    from vlmsam.errors import CheckpointError
    from vlmsam.vlm.pretrain import VisionPretrainConfig, pretrain_vision

    if not (Path(args.vlm) / "config.json").is_file():
        raise CheckpointError(f"{args.vlm}: not a VLM directory (no config.json)")
    config = VisionPretrainConfig(**_given(args))
    log = pretrain_vision(args.vlm, args.data, args.out, config)
    print(f"pre-trained vision tower: held-out colour accuracy {log['val_colour_acc']:.3f} (cells mostly covered by a "
          f"shape), shape-kind accuracy {log['val_kind_acc']:.3f} (per shape), position error "
          f"{log['val_position_error']:.2f} cells, {config.steps} steps -> {args.out}")
    return 0


def _numbers(text: str, count: int, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise PromptError(f"--{what} {text!r}: expected {count} comma-separated numbers")
    return values


def run_sam(args: argparse.Namespace) -> int:
    from vlmsam.io import load_image, write_result
    from vlmsam.sam import SamBackend

    boxes = [_numbers(b, 4, "box") for b in args.box]
    points = [_numbers(p, 2, "point") for p in args.point]
    if not boxes and not points:
        raise PromptError("give at least one --box X1,Y1,X2,Y2 or --point X,Y")
    labels = args.point_label
    if labels is not None and len(labels) != len(points):
        raise PromptError(f"{len(labels)} --point-label values for {len(points)} --point prompts")
    if points and len(boxes) > 1:
        raise PromptError("points can be combined with at most one box")

    image = load_image(args.image)  # before the model: a bad image should fail fast
    t0 = time.perf_counter()
    sam = SamBackend.from_pretrained(args.sam, device=args.device)
    load_s = time.perf_counter() - t0

    n = max(len(boxes), 1)  # points are shared by every box prompt
    result = sam.segment(
        image,
        boxes=boxes or None,
        points=[points] * n if points else None,
        point_labels=[labels or [1] * len(points)] * n if points else None,
        multimask_output=args.multimask,
    )
    result.timings["load_model"] = load_s
    stem = Path(args.image.split("?")[0]).stem or "image"
    written = write_result(result, image, args.out, stem)
    total = sum(result.timings.values())
    print(f"{result.num_masks} mask(s), scores {[round(float(s), 3) for s in result.scores]}, {total:.2f}s")
    print(f"overlay: {written['overlay']}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from vlmsam.errors import CheckpointError
    from vlmsam.sam.checkpoints import load_meta_checkpoint, save_converted

    path = Path(args.checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    model = load_meta_checkpoint(path)
    out = save_converted(model, args.out_dir)
    vc = model.config.vision_config
    print(
        f"converted {path.name}: ViT {vc.hidden_size}-wide, {vc.num_hidden_layers} layers, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters -> {out}"
    )
    return 0
