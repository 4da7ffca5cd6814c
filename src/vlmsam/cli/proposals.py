"""``vlmsam proposals``: SAM's automatic masks for every image of some datasets, sharded and resumable."""

from __future__ import annotations

import argparse

from vlmsam.cli.types import fraction, integer, non_negative


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "proposals", help="precompute SAM's automatic masks for datasets (sharded across torchrun ranks, resumable)",
        description="Run SAM's automatic mask generator over every image of the named splits (longest side at most "
        "--max-side) and store the masks as COCO RLE in OUT/shards/ (JSON lines + an index; no pickle). A rerun skips "
        "what is done; a truncated or corrupt shard is reported and recomputed. Runs under torchrun as it is.",
        epilog="example: torchrun --nproc_per_node=8 -m vlmsam proposals --dataset-dir ./dataset "
        "--datasets reason_seg:train,reason_seg:val --sam facebook/sam-vit-huge --out proposals/")
    p.add_argument("--dataset-dir", required=True)
    p.add_argument("--datasets", required=True, help="splits, e.g. reason_seg:train,reason_seg:val,refcoco|unc|train")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--sam", required=True, help="SAM: Meta .pth, transformers directory or hub id")
    p.add_argument("--points-per-side", type=integer(1, 1024), default=32)
    p.add_argument("--points-per-batch", type=integer(1, 1 << 20), default=64)
    p.add_argument("--pred-iou-thresh", type=fraction, default=0.88)
    p.add_argument("--stability-score-thresh", type=fraction, default=0.95)
    p.add_argument("--box-nms-thresh", type=fraction, default=0.7)
    p.add_argument("--min-mask-region-area", type=non_negative, default=0)
    p.add_argument("--max-side", type=integer(16, 16384), default=1024, help="images are downscaled to this longest side first (default 1024)")
    p.add_argument("--shard-size", type=integer(1, 100_000), default=16, help="images per shard (default 16)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the rank's device)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vlmsam.errors import VlmsamError

    # (numbers are range-checked by their argparse types)
    if not Path(args.dataset_dir).is_dir():
        raise VlmsamError(f"{args.dataset_dir}: no such directory (--dataset-dir: the dataset tree, see docs/datasets.md)")
    if Path(args.out).is_file():
        raise VlmsamError(f"{args.out}: is a file; --out names a directory")
    from vlmsam.devices import resolve_device
    from vlmsam.proposals.generate import run_proposals
    from vlmsam.sam import SamBackend
    from vlmsam.sam.amg import AmgConfig
    from vlmsam.distributed import init_distributed, shutdown

    device = resolve_device(args.device)
    info = init_distributed()
    try:
        sam = SamBackend.from_pretrained(args.sam, device=device or info.device)
        config = AmgConfig(points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
                           pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
                           box_nms_thresh=args.box_nms_thresh, min_mask_region_area=args.min_mask_region_area)
        run_proposals(args.dataset_dir, args.datasets, args.out, sam, config, shard_size=args.shard_size, max_side=args.max_side)
    finally:
        shutdown()
    return 0
