"""``vlmsam merge-lora``: fold a [SEG] checkpoint's LoRA into its base weights."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge-lora",
        help="write a standalone [SEG] model with LoRA merged into the base weights",
        description="Load a [SEG] checkpoint (config, LoRA adapter, trainable weights), merge the "
        "LoRA into the language model and save a checkpoint that loads without peft: the merged "
        "VLM under OUT_DIR/vlm, SAM under OUT_DIR/sam.",
    )
    p.add_argument("checkpoint", help="a [SEG] checkpoint directory (from training or save_pretrained)")
    p.add_argument("out_dir", help="where to write the merged checkpoint")
    p.set_defaults(run=run_merge)


def run_merge(args: argparse.Namespace) -> int:
    from vlmsam.errors import CheckpointError

    if not Path(args.checkpoint).is_dir():
        raise CheckpointError(f"{args.checkpoint}: no such checkpoint directory")
    if not (Path(args.checkpoint) / "vlmsam_config.json").is_file():
        raise CheckpointError(f"{args.checkpoint}: not a vlmsam [SEG] checkpoint (no vlmsam_config.json)")
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        raise CheckpointError(f"{args.out_dir}: is a file; name the directory to write")
    from vlmsam.seg_token import SegTokenModel
    model = SegTokenModel.from_pretrained(args.checkpoint)
    out = model.save_merged(args.out_dir)
    print(f"merged LoRA into the base weights -> {out}")
    return 0
