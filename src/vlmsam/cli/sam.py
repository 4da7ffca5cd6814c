"""``vlmsam sam`` (prompt SAM with boxes/points) and ``vlmsam convert-sam`` (Meta .pth -> transformers)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vlmsam.cli.types import fraction, integer, non_negative
from vlmsam.errors import PromptError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sam",
        help="segment an image with SAM from box and/or point prompts",
        description="Prompt Segment Anything with boxes and/or points (original-image pixels). "
        "Several --box flags give several masks; --point flags are combined into one prompt, or "
        "paired with a single --box. With --everything, SAM's automatic mask generator finds every object "
        "(Meta's SamAutomaticMaskGenerator: a grid of points, IoU / stability filters, NMS) and writes "
        "{stem}_proposals.json (COCO RLE, Meta's fields) beside the usual files. With --phrase (SAM 3), every "
        "instance of each noun phrase, written as {stem}_instances.json (COCO RLE, phrase, bbox as COCO's x, y, w, h, score).",
    )
    p.add_argument("image", help="image path or http(s) URL")
    p.add_argument("--sam", required=True, help="Meta .pth file (sam_vit_h_4b8939.pth), transformers directory, or hub id (facebook/sam-vit-huge)")
    p.add_argument("--box", action="append", default=[], metavar="X1,Y1,X2,Y2", help="box prompt, XYXY in pixels (repeatable)")
    p.add_argument("--point", action="append", default=[], metavar="X,Y", help="point prompt in pixels (repeatable)")
    p.add_argument("--point-label", action="append", type=integer(0, 1, "0 or 1"), default=None, metavar="0|1",
                   help="label of each --point in order: 1 foreground (default), 0 background")
    p.add_argument("--multimask", action=argparse.BooleanOptionalAction, default=False,
                   help="let SAM propose 3 masks per prompt and keep the best (default: off)")
    p.add_argument("--everything", action="store_true", help="every object: the automatic mask generator (no prompts)")
    p.add_argument("--phrase", action="append", default=[], metavar="TEXT",
                   help="SAM 3: every instance of this noun phrase, e.g. 'red circle' (repeatable; one vision pass for all)")
    p.add_argument("--score-threshold", type=fraction, default=0.5,
                   help="--phrase: keep instances whose score (class x presence) is above this (default 0.5, Meta's)")
    p.add_argument("--points-per-side", type=integer(1, 1024), default=32, help="--everything: grid points per side (default 32)")
    p.add_argument("--points-per-batch", type=integer(1, 1 << 20), default=64, help="--everything: points decoded per batch (default 64)")
    p.add_argument("--pred-iou-thresh", type=fraction, default=0.88, help="--everything: predicted-IoU filter (default 0.88)")
    p.add_argument("--stability-score-thresh", type=fraction, default=0.95, help="--everything: stability filter (default 0.95)")
    p.add_argument("--box-nms-thresh", type=fraction, default=0.7, help="--everything: box NMS IoU (default 0.7)")
    p.add_argument("--crop-n-layers", type=integer(0, 4), default=0, help="--everything: layers of image crops (default 0)")
    p.add_argument("--min-mask-region-area", type=non_negative, default=0,
                   help="--everything: remove holes and islands smaller than this (default 0 = off)")
    p.add_argument("--out", default="outputs", help="output directory (default: outputs)")
    p.add_argument("--device", default="auto", help="auto (CUDA where available), cpu, cuda or cuda:N (default: auto)")
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


def _numbers(text: str, count: int, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise PromptError(f"--{what} {text!r}: expected {count} comma-separated numbers")
    return values


def run_sam(args: argparse.Namespace) -> int:
    from vlmsam.io.writer import check_out_dir

    check_out_dir(args.out)  # before the model loads
    if args.phrase:
        return run_phrases(args)
    if args.everything:
        return run_everything(args)
    boxes = [_numbers(b, 4, "box") for b in args.box]
    points = [_numbers(p, 2, "point") for p in args.point]
    if not boxes and not points:
        raise PromptError("give at least one --box X1,Y1,X2,Y2 or --point X,Y")
    labels = args.point_label
    if labels is not None and len(labels) != len(points):
        raise PromptError(f"{len(labels)} --point-label values for {len(points)} --point prompts")
    if points and len(boxes) > 1:
        raise PromptError("points can be combined with at most one box")
    from vlmsam.io import load_image, write_result  # only now: the arguments are known to be usable
    from vlmsam.sam import SamBackend, SamPredictor

    from vlmsam.devices import resolve_device

    device = resolve_device(args.device)
    image = load_image(args.image)  # before the model: a bad image should fail fast
    t0 = time.perf_counter()
    predictor = SamPredictor(SamBackend.from_pretrained(args.sam, device=device))
    load_s = time.perf_counter() - t0

    n = max(len(boxes), 1)  # points are shared by every box prompt
    result = predictor(
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


def run_everything(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from vlmsam.devices import resolve_device
    from vlmsam.io import load_image, write_result
    from vlmsam.result import SegmentationResult

    if args.box or args.point:
        raise PromptError("--everything takes no --box or --point prompts")
    if args.points_per_side < 1 or args.points_per_batch < 1:
        raise PromptError("--points-per-side and --points-per-batch must be at least 1")
    device = resolve_device(args.device)
    image = load_image(args.image)
    from vlmsam.sam import SamBackend
    from vlmsam.sam.amg import AutomaticMaskGenerator

    sam = SamBackend.from_pretrained(args.sam, device=device)
    t0 = time.perf_counter()
    amg = AutomaticMaskGenerator(sam, points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
                                 pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
                                 box_nms_thresh=args.box_nms_thresh, crop_n_layers=args.crop_n_layers,
                                 min_mask_region_area=args.min_mask_region_area)
    proposals = sorted(amg.generate(image), key=lambda p: -p.area)
    elapsed = time.perf_counter() - t0
    masks = np.stack([p.mask() for p in proposals]) if proposals else np.zeros((0, image.height, image.width), bool)
    result = SegmentationResult(masks=masks, scores=[p.predicted_iou for p in proposals], timings={"generate": elapsed})
    stem = Path(args.image.split("?")[0]).stem or "image"
    name = f"{stem}_proposals.json"  # written with the rest, as one set
    written = write_result(result, image, args.out, stem, files={name: json.dumps([p.to_dict() for p in proposals]).encode()})
    path = written[name]
    print(f"{len(proposals)} mask(s) in {elapsed:.2f}s; {path}")
    print(f"overlay: {written['overlay']}")
    return 0


def run_phrases(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from vlmsam.devices import resolve_device
    from vlmsam.io import load_image, write_result
    from vlmsam.io.writer import mask_to_rle
    from vlmsam.result import SegmentationResult
    from vlmsam.sam import load_sam_backend

    if args.box or args.point or args.everything:
        raise PromptError("--phrase takes no --box, --point or --everything")
    if any(not p.strip() for p in args.phrase):
        raise PromptError("--phrase is empty: name what to segment, e.g. --phrase 'red circle'")
    image = load_image(args.image)  # before the model: a bad image should fail fast
    sam = load_sam_backend(args.sam, device=resolve_device(args.device))
    if not hasattr(sam, "segment_phrases"):
        raise PromptError(f"--phrase needs a SAM 3 (e.g. --sam facebook/sam3); {args.sam} takes boxes and points only")
    t0 = time.perf_counter()
    found = sam.segment_phrases(sam.encode(image), args.phrase, threshold=args.score_threshold)
    elapsed = time.perf_counter() - t0
    records = [{"phrase": f.phrase, "score": round(float(s), 4),
                "bbox": [round(float(v), 2) for v in (b[0], b[1], b[2] - b[0], b[3] - b[1])],  # COCO's x, y, w, h
                "segmentation": mask_to_rle(m)} for f in found for m, b, s in zip(f.masks, f.boxes, f.scores)]
    masks = [m for f in found for m in f.masks]
    result = SegmentationResult(masks=np.stack(masks) if masks else np.zeros((0, image.height, image.width), bool),
                                scores=[r["score"] for r in records], labels=[r["phrase"] for r in records],
                                timings={"segment_phrases": elapsed})
    stem = Path(args.image.split("?")[0]).stem or "image"
    name = f"{stem}_instances.json"
    written = write_result(result, image, args.out, stem, files={name: json.dumps(records).encode()})
    counts = ", ".join(f"{f.phrase!r}: {len(f)}" for f in found)
    print(f"{len(records)} instance(s) ({counts}) in {elapsed:.2f}s; {written[name]}")
    print(f"overlay: {written['overlay']}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from vlmsam.errors import CheckpointError

    path = Path(args.checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes)")
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        raise CheckpointError(f"{args.out_dir}: is a file; name the directory to write")
    from vlmsam.sam.checkpoints import load_meta_checkpoint, save_converted
    model = load_meta_checkpoint(path)
    out = save_converted(model, args.out_dir)
    vc = model.config.vision_config
    print(
        f"converted {path.name}: ViT {vc.hidden_size}-wide, {vc.num_hidden_layers} layers, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters -> {out}"
    )
    return 0
