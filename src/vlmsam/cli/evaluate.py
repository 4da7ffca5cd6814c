"""``vlmsam evaluate`` (any segmenter, by generation) and ``vlmsam score`` (saved predictions, no model)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlmsam.cli.types import non_negative, tokens


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "evaluate",
        help="answer an evaluation split by generation and score it (gIoU, cIoU)",
        description="Evaluate a segmenter by generation on ReasonSeg or a refer split; writes OUT/metrics.json, "
        "OUT/predictions.jsonl and OUT/summary.png. Runs sharded under torchrun.",
    )
    e.add_argument("--segmenter", help="which design (a checkpoint names its own; needed only with --vlm/--sam)")
    e.add_argument("--model", help="a checkpoint directory (default: the bundled vlmsam-tiny)")
    e.add_argument("--vlm", help="base VLM by hub id or path (instead of --model)")
    e.add_argument("--sam", help="base SAM by hub id, directory or Meta .pth (with --vlm)")
    e.add_argument("--detector", help="Grounding DINO by hub id or path (gsam, grounded)")
    e.add_argument("--vlm-endpoint", metavar="URL", help="an OpenAI-compatible server as the VLM (box_prompt; --vlm names its model)")
    e.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the rank's device under torchrun, else cpu)")
    e.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="model dtype (default: as saved)")
    e.add_argument("--dataset", required=True, help="reason_seg:val, reason_seg:test, refcoco|unc|val, refcocog|umd|test, ...")
    e.add_argument("--dataset-dir", required=True)
    e.add_argument("--out", required=True, help="output directory")
    e.add_argument("--max-new-tokens", type=tokens, default=128, help="generation stops at the end of the answer or here (default 128)")
    e.add_argument("--limit", type=non_negative, default=0, help="evaluate only the first N images (0 = all)")
    e.add_argument("--multi-part", choices=["sum", "or"], default="sum",
                   help="how a refer target annotated in several parts is built: 'sum' as the published evaluation "
                   "builds it (overlaps count as background; the default, so scores compare with papers) or 'or' (their union)")
    e.set_defaults(run=run_evaluate)

    s = sub.add_parser(
        "score",
        help="score saved predictions (any system) against a dataset, with no model",
        description="Score a predictions.jsonl ({\"image\": STEM, \"query\": TEXT, \"answer\": TEXT, \"masks\": [COCO RLE]} "
        "per line) against an evaluation split; writes OUT/metrics.json and OUT/summary.png.",
    )
    s.add_argument("--predictions", required=True)
    s.add_argument("--dataset", required=True)
    s.add_argument("--dataset-dir", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--multi-part", choices=["sum", "or"], default="sum",
                   help="how a refer target annotated in several parts is built: 'sum' as the published evaluation "
                   "builds it (overlaps count as background; the default, so scores compare with papers) or 'or' (their union)")
    s.set_defaults(run=run_score)


def _eval_dataset(args):
    from vlmsam.data.registry import build_eval_dataset

    return build_eval_dataset(args.dataset, args.dataset_dir, multi_part=args.multi_part)


def run_evaluate(args: argparse.Namespace) -> int:
    from vlmsam.devices import resolve_device
    from vlmsam.evaluation.evaluate import evaluate
    from vlmsam.segmenter import load_segmenter
    from vlmsam.train.distributed import init_distributed, shutdown

    if args.segmenter is not None:
        from vlmsam.engine.registry import builder

        builder(args.segmenter)  # an unknown name fails before anything loads
    device = resolve_device(args.device)  # a CUDA request without CUDA fails before torchrun setup
    from vlmsam.io.writer import prepare_out_dir

    prepare_out_dir(args.out)  # a file named as --out fails now, not after the whole evaluation
    info = init_distributed()
    try:
        ds = _eval_dataset(args)
        seg = load_segmenter(args.model, args.segmenter, vlm=args.vlm, sam=args.sam,
                             device=device or info.device, dtype=args.dtype, vlm_endpoint=args.vlm_endpoint,
                             detector=args.detector)
        metrics = evaluate(seg.engine, ds, info=info, out_dir=Path(args.out), max_new_tokens=args.max_new_tokens, limit=args.limit)
        if info.is_main:
            print(json.dumps(metrics, indent=2))
            print(f"wrote {Path(args.out) / 'metrics.json'}, predictions.jsonl, summary.png")
    finally:
        shutdown()
    return 0


def run_score(args: argparse.Namespace) -> int:
    from vlmsam.evaluation.evaluate import score_predictions
    from vlmsam.io.writer import prepare_out_dir

    prepare_out_dir(args.out)  # a file named as --out fails first
    metrics = score_predictions(args.predictions, _eval_dataset(args), Path(args.out))
    print(json.dumps(metrics, indent=2))
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0
