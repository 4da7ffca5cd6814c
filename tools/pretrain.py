"""``python -m tools.pretrain sam`` (promptable pre-training of a SAM built from scratch) and
``python -m tools.pretrain vision`` (dense pre-training of a from-scratch VLM vision tower): how the
bundled vlmsam-tiny's parts start. Workshop commands for rebuilding the bundled defaults (the make
targets run them), so they live beside the code they run, outside the installed ``vlmsam`` command.

Errors are reported as ``vlmsam``'s are: one line, exit code 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlmsam.cli.main import Parser, quiet_libraries, run_command
from vlmsam.cli.types import number, positive
from vlmsam.cli.types import seed as seed_value

PROG = "python -m tools.pretrain"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Pre-train the from-scratch parts of the bundled vlmsam-tiny.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    _register_sam(sub)
    _register_vision(sub)
    return parser


def _register_sam(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "sam",
        help="pre-train a from-scratch SAM on synthetic scenes (point/box prompt -> object mask)",
        description="SAM's own task on `vlmsam data synth` scenes: a point or a box on one visible shape in, "
        "its mask out, every part trained. vlmsam-tiny's SAM starts here, as real [SEG] models start "
        "from Meta's SAM. Prints the held-out IoU; writes a transformers SamModel directory.",
    )
    t.add_argument("sam", help="SAM directory to start from (e.g. the untrained vlmsam-tiny base)")
    _pretrain_arguments(t, "the pre-trained SamModel", steps=3000, batch="images per step, 3 shapes each (default 16)",
                        seed="prompt sampling and initialisation seed")
    t.add_argument("--multimask", action="store_true", default=argparse.SUPPRESS,
                   help="also train the three multimask outputs (the best one per prompt) and the IoU head, what "
                   "`vlmsam sam --everything` and proposals rely on")
    t.add_argument("--point-share", type=number(0, 1, what="a share"), default=argparse.SUPPRESS,
                   help="share of prompts that are one point; the rest a box, or a box and a point (default 0.5)")
    t.add_argument("--background-share", type=number(0, 1, what="a share"), default=argparse.SUPPRESS,
                   help="with --multimask: images that also get a background point, rated IoU 0 (default 0)")
    t.add_argument("--freeze-image-encoder", action="store_true", default=argparse.SUPPRESS,
                   help="train only the prompt encoder and mask decoder")
    t.set_defaults(run=run_pretrain_sam)


def _register_vision(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser(
        "vision",
        help="pre-train a from-scratch VLM vision tower on synthetic scenes (each visual token names its colour and shape)",
        description="Dense pre-training on `vlmsam data synth` scenes: a linear head on every visual token "
        "(one merged cell) predicts the share of each colour and shape kind it shows, and where the cell is; the vision tower "
        "and merger are trained; the head is saved beside the VLM (pretrain_head.safetensors), not in it. vlmsam-tiny's VLM starts here, as real VLMs start from "
        "a pre-trained vision encoder. Prints held-out accuracies; writes the whole VLM directory.",
    )
    v.add_argument("vlm", help="Qwen-VL directory to start from (e.g. the untrained vlmsam-tiny base)")
    _pretrain_arguments(v, "the VLM with its pre-trained vision tower", steps=3000, batch="images per step (default 32)",
                        seed="sampling and head initialisation seed")
    v.add_argument("--kind-weight", type=number(0, 1e6, what="a weight"), default=argparse.SUPPRESS,
                   help="weight of the shape-kind loss against the colour loss (default 1)")
    v.add_argument("--position-weight", type=number(0, 1e6, what="a weight"), default=argparse.SUPPRESS,
                   help="weight of each token's position (MSE, image fractions) (default 10)")
    v.set_defaults(run=run_pretrain_vision)


def _pretrain_arguments(p: argparse.ArgumentParser, output: str, *, steps: int, batch: str, seed: str) -> None:
    """The options both pre-training commands share. Their defaults live in the config classes; the
    help states them and a test keeps the two equal."""
    p.add_argument("--data", required=True, help="directory written by `vlmsam data synth --out`")
    p.add_argument("--out", required=True, help=f"directory for {output}")
    p.add_argument("--steps", type=positive, default=argparse.SUPPRESS, help=f"optimiser steps (default {steps})")
    p.add_argument("--batch-size", type=positive, default=argparse.SUPPRESS, help=batch)
    p.add_argument("--lr", type=number(0, 10, lo_open=True, what="a learning rate"), default=argparse.SUPPRESS, help="peak AdamW rate, cosine decay (default 0.002)")
    p.add_argument("--seed", type=seed_value, default=argparse.SUPPRESS, help=f"{seed} (default 0)")


def _given(args: argparse.Namespace) -> dict:
    """The pre-training options given on the command line (the rest keep the config's defaults)."""
    return {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "seed", "kind_weight", "position_weight", "multimask",
                                                 "point_share", "background_share", "freeze_image_encoder") if hasattr(args, k)}


def run_pretrain_sam(args: argparse.Namespace) -> int:
    from vlmsam.errors import CheckpointError
    from tools.pretrain_sam import PretrainConfig, pretrain_sam

    if not Path(args.sam).is_dir():
        raise CheckpointError(f"{args.sam}: not a SAM directory")
    config = PretrainConfig(**_given(args))
    log = pretrain_sam(args.sam, args.data, args.out, config)
    multimask = f", multimask best-rated {log['val_multimask_best_iou']:.3f}" if config.multimask else ""
    print(f"pre-trained SAM: held-out IoU {log['val_iou']:.3f}{multimask} (point/box prompts, {config.steps} steps) -> {args.out}")
    return 0


def run_pretrain_vision(args: argparse.Namespace) -> int:
    from vlmsam.errors import CheckpointError
    from tools.pretrain_vision import VisionPretrainConfig, pretrain_vision

    if not (Path(args.vlm) / "config.json").is_file():
        raise CheckpointError(f"{args.vlm}: not a VLM directory (no config.json)")
    config = VisionPretrainConfig(**_given(args))
    log = pretrain_vision(args.vlm, args.data, args.out, config)
    print(f"pre-trained vision tower: held-out colour accuracy {log['val_colour_acc']:.3f} (cells mostly covered by a "
          f"shape), shape-kind accuracy {log['val_kind_acc']:.3f} (per shape), position error "
          f"{log['val_position_error']:.2f} cells, {config.steps} steps -> {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries(verbose=False)  # quiet as `vlmsam` is: library chatter would bury the one-line error
    return run_command(args, PROG)


if __name__ == "__main__":
    sys.exit(main())
