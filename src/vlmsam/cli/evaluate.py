"""``vlmsam evaluate`` (any segmenter, by generation) and ``vlmsam score`` (saved predictions, no model)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vlmsam.cli.types import non_negative, tokens
from vlmsam.grounding.prompts import STYLES
from vlmsam.errors import VlmsamError


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
    e.add_argument("--dataset", required=True, help="reason_seg:val, reason_seg:test, refcoco|unc|val, refcocog|umd|test, ...; "
                   "phrases:test scores a SAM 3 per instance on synthetic scenes' noun phrases, "
                   "coco_instances:ANNOTATIONS.json|IMAGE_DIR on COCO-format instances")
    e.add_argument("--dataset-dir", required=True)
    e.add_argument("--out", required=True, help="output directory")
    e.add_argument("--max-new-tokens", type=tokens, help="generation stops at the end of the answer or here (default: the design's)")
    e.add_argument("--style", choices=STYLES, help="how the grounding VLM is asked (box_prompt); seg_zero and vision_reasoner "
                   "run those models' published inference")
    e.add_argument("--limit", type=non_negative, default=0, help="evaluate only the first N images (0 = all)")
    e.add_argument("--multi-part", choices=["sum", "or"], default="sum",
                   help="how a refer target annotated in several parts is built: 'sum' as the published evaluation "
                   "builds it (overlaps count as background; the default, so scores compare with papers) or 'or' (their union)")
    e.add_argument("--on-bad-sample", choices=["skip", "error"], default="skip",
                   help="a sample with a missing or unusable image or a broken annotation: skip it and count it in "
                   "metrics.json's skipped_samples (default) or stop, naming it (`vlmsam data check` lists them all)")
    e.add_argument("--resume", action="store_true",
                   help="keep the predictions an interrupted run wrote in OUT/predictions.jsonl and answer only the rest")
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
    s.add_argument("--on-bad-sample", choices=["skip", "error"], default="skip",
                   help="a sample with a missing or unusable image or a broken annotation: skip it and count it in "
                   "metrics.json's skipped_samples (default) or stop, naming it (`vlmsam data check` lists them all)")
    s.set_defaults(run=run_score)


def _eval_dataset(args):
    from vlmsam.data.registry import build_eval_dataset

    return build_eval_dataset(args.dataset, args.dataset_dir, multi_part=args.multi_part)


def _note(message: str) -> None:
    print(message, file=sys.stderr)


RUN_FILE = "evaluate_run.json"  # what an evaluation in OUT was run with: --resume refuses to mix two


OUTPUTS = ("predictions.jsonl", "metrics.json", "summary.png", RUN_FILE)


def check_resumable(args: argparse.Namespace, write: bool = True) -> None:
    """Refuse an OUT holding files vlmsam did not write, and with --resume one written by another
    evaluation; then write OUT/evaluate_run.json. All before a model loads."""
    from vlmsam.io.files import read_json
    from vlmsam.io.result_set import check_ours, write_set

    check_ours(Path(args.out), OUTPUTS)

    run = {"dataset": args.dataset, "dataset_dir": str(Path(args.dataset_dir).resolve()), "multi_part": args.multi_part,
           "model": str(Path(args.model).resolve()) if args.model else None, "segmenter": args.segmenter, "vlm": args.vlm,
           "sam": args.sam, "detector": args.detector, "vlm_endpoint": args.vlm_endpoint, "dtype": args.dtype,
           "max_new_tokens": args.max_new_tokens, "style": args.style}
    path = Path(args.out) / RUN_FILE
    if args.resume and path.is_file():
        saved = read_json(path, "the settings of an earlier evaluation", dict)
        differ = sorted(k for k in run if saved.get(k) != run[k])
        if differ:
            raise VlmsamError(f"{args.out}: holds an evaluation with other settings ("
                              + ", ".join(f"{k}: {saved.get(k)!r} -> {run[k]!r}" for k in differ[:3])
                              + "); resume with the same ones, or use another --out")
    if write:
        write_set(args.out, [(RUN_FILE, (json.dumps(run, indent=2) + "\n").encode())], unit=str(path))


def run_phrase_evaluation(args: argparse.Namespace) -> int:
    """``--dataset phrases:SPLIT`` (synthetic scenes) or ``coco_instances:ANN|IMAGES``: a SAM 3 (``--sam``, or a
    grounded checkpoint on one) scored per instance."""
    from vlmsam.devices import resolve_device
    from vlmsam.evaluation.phrases import evaluate_phrases, phrases_png
    from vlmsam.io.result_set import check_ours, write_set
    from vlmsam.io.writer import prepare_out_dir
    from vlmsam.segmenter import load_segmenter

    from vlmsam.evaluation.phrases import coco_cases, synthetic_cases

    kind, _, which = args.dataset.partition(":")
    prepare_out_dir(args.out)
    check_ours(Path(args.out), ("metrics.json", "summary.png"))
    seg = load_segmenter(args.model, args.segmenter or ("grounded" if not args.model else None), sam=args.sam,
                         device=resolve_device(args.device), dtype=args.dtype)
    sam3 = getattr(seg.engine, "sam", None)
    if not hasattr(sam3, "segment_phrases"):
        raise VlmsamError("--dataset phrases:... scores a SAM 3: name one with --sam (e.g. facebook/sam3) or a grounded "
                          "checkpoint on SAM 3 with --model")
    threshold = getattr(seg.engine, "score_threshold", 0.5)
    cases = coco_cases(args.dataset_dir, which, args.limit) if kind == "coco_instances" else \
        synthetic_cases(args.dataset_dir, which or "test", args.limit)
    metrics, records = evaluate_phrases(sam3, cases, threshold=threshold)
    files = [("metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())]
    picture = phrases_png(records)
    if picture is not None:
        files.append(("summary.png", picture))
    write_set(args.out, files, unit=str(Path(args.out) / "metrics.json"))
    print(json.dumps(metrics, indent=2))
    print(f"wrote {Path(args.out) / 'metrics.json'}, summary.png")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    if args.dataset.startswith(("phrases", "coco_instances")):
        return run_phrase_evaluation(args)
    from vlmsam.devices import resolve_device
    from vlmsam.evaluation.evaluate import evaluate
    from vlmsam.segmenter import load_segmenter
    from vlmsam.distributed import init_distributed, shutdown

    from vlmsam.cli.segment import design_of

    design_of(args)  # an unknown design, or a flag it does not take, fails before anything loads
    device = resolve_device(args.device)  # a CUDA request without CUDA fails before torchrun setup
    from vlmsam.io.writer import prepare_out_dir

    prepare_out_dir(args.out)  # a file named as --out fails now, not after the whole evaluation
    info = init_distributed()
    try:
        ds = _eval_dataset(args)
        check_resumable(args, write=info.is_main)  # every rank refuses alike; before any model loads
        seg = load_segmenter(args.model, args.segmenter, vlm=args.vlm, sam=args.sam,
                             device=device or info.device, dtype=args.dtype, vlm_endpoint=args.vlm_endpoint,
                             detector=args.detector, max_new_tokens=args.max_new_tokens, style=args.style)
        metrics = evaluate(seg.engine, ds, info=info, out_dir=Path(args.out), max_new_tokens=args.max_new_tokens,
                           limit=args.limit, on_bad_sample=args.on_bad_sample, resume=args.resume, print_fn=_note)
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
    from vlmsam.io.result_set import check_ours

    check_ours(Path(args.out), ("metrics.json", "summary.png"))  # before the dataset is read
    metrics = score_predictions(args.predictions, _eval_dataset(args), Path(args.out), on_bad_sample=args.on_bad_sample,
                                print_fn=_note)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0
