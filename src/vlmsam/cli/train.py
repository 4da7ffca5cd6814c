"""``vlmsam train``: one process, or under torchrun for DDP."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the [SEG] model (one process, or under torchrun for DDP)",
        description="Train the [SEG]-token model from a YAML config plus key=value overrides (section.key=value, "
        "or key=value where unambiguous; booleans as true/false). The same command runs under "
        "`torchrun --nproc_per_node=N -m vlmsam train ...`. The resolved config is saved as RUN_DIR/config.yaml.",
        epilog="example: vlmsam train configs/reason_seg.yaml train.run_dir=runs/exp1 lr=1e-4 "
        "datasets=reason_seg,refer_seg sample_rates=1,3 gradient_checkpointing=true --resume auto",
    )
    p.add_argument("config", nargs="?", help="YAML config (sections model, data, train, eval)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--resume", help="'auto' (the newest checkpoint of the run directory) or a checkpoint directory")
    p.add_argument("--on-bad-sample", choices=["skip", "error"], help="skip and count bad samples (default) or stop")
    p.add_argument("--overwrite", action="store_true", help="start over in a run directory that already holds a run")
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from vlmsam.train.trainer import run_from_cli

    overrides = list(args.overrides)
    if args.resume:
        overrides.append(f"train.resume={args.resume}")
    if args.on_bad_sample:
        overrides.append(f"data.on_bad_sample={args.on_bad_sample}")
    if args.overwrite:
        overrides.append("train.overwrite=true")
    config = args.config
    if config and "=" in config and not _is_file(config):  # only overrides were given
        overrides.insert(0, config)
        config = None
    return run_from_cli(config, overrides)


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: not a file
        return False
