"""What limits the box_prompt default: its SAM, or where its VLM points.

``python -m tools.grounding_ceiling ceiling DATA --sam SAM [--n N]``: the gIoU a grounding VLM would score on the
test split of ``DATA`` if every answer were the truth itself: one prompt per connected part of the target (its
point, the mask pixel nearest the part's centre of mass, as the grounding answers are made; its tight box; or
both), the masks joined; a request with no target scores 1 (the VLM says so).

``python -m tools.grounding_ceiling points PREDICTIONS DATA [--processor DIR]``: where an evaluation's answered
points fall: inside the target, within 3 or 6 pixels of it, inside the answer's own box (``--processor``: the
grounding VLM's, whose resized frame the answers' coordinates are in; default the bundled one).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vlmsam.engine.registry import DEFAULT_MODEL_DIR

GROUNDING_VLM = DEFAULT_MODEL_DIR.parent / "vlmsam-tiny-grounding" / "vlm"


def truth_prompts(truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(points (N, 1, 2), boxes (N, 4))`` in original pixels, one per connected part of ``truth``: GRPO's truth
    (the grounding answers' box and point) in the image's own frame."""
    from vlmsam.train.grpo_data import truth_objects

    objects = truth_objects(truth.astype(np.uint8), truth.shape, published_rounding=False)
    return (np.array(objects["points"], np.float32).reshape(-1, 1, 2),
            np.array(objects["boxes"], np.float32).reshape(-1, 4))


def ceiling(data: str, sam_path: str, n: int = 0) -> dict:
    """gIoU over the first ``n`` test scenes of ``data`` (0: all) when SAM is prompted with the truth's own prompts."""
    from vlmsam.data.reason_seg import ReasonSegDataset
    from vlmsam.io.images import load_image
    from vlmsam.metrics.iou import intersection_union, pair_iou
    from vlmsam.sam import load_sam_backend

    sam = load_sam_backend(sam_path, device="cpu")
    ds = ReasonSegDataset(data, "test")
    scores = {"point": [], "box": [], "box+point": []}
    for i in range(n or len(ds)):
        sample = ds.load_eval(i)
        truth = sample.masks[0] == 1
        points, boxes = truth_prompts(truth)
        if not len(points):
            for v in scores.values():
                v.append(1.0)
            continue
        embedding = sam.encode(load_image(sample.image))
        labels = np.ones((len(points), 1), np.int64)
        for name, prompts in (("point", {"points": points, "point_labels": labels}), ("box", {"boxes": boxes}),
                              ("box+point", {"boxes": boxes, "points": points, "point_labels": labels})):
            mask = sam.predict(embedding, **prompts).masks[:, 0].any(0).cpu().numpy()
            scores[name].append(pair_iou(*intersection_union(mask, truth)))
    return {"n": len(scores["point"]), **{k: round(float(np.mean(v)), 4) for k, v in scores.items()}}


def points(predictions: str, data: str, processor_from: str) -> dict:
    """Shares of an evaluation's answered points inside, near and off the target (and inside their own box)."""
    import cv2

    from vlmsam.data.reason_seg import ReasonSegDataset
    from vlmsam.grounding.parse import parse_grounding
    from vlmsam.vlm.processor import VlmProcessor

    processor = VlmProcessor.from_pretrained(processor_from)
    ds = ReasonSegDataset(data, "test")
    index = {ds.image_path(i).stem: i for i in range(len(ds))}
    count = dict.fromkeys(("points", "in_target", "within_3px", "within_6px", "in_own_box"), 0)
    for line in Path(predictions).read_text().splitlines():
        pred = json.loads(line)
        truth = ds.load_eval(index[pred["image"]]).masks[0] == 1
        h, w = truth.shape
        frame = processor.resized_size(h, w)
        answer = parse_grounding(pred["answer"], (w, h), (frame[1], frame[0]))
        distance = cv2.distanceTransform((~truth).astype(np.uint8), cv2.DIST_L2, 5)
        for box, pts in zip(answer.boxes, answer.points):
            for x, y in pts:
                d = distance[min(int(y), h - 1), min(int(x), w - 1)]
                count["points"] += 1
                count["in_target"] += bool(d == 0)
                count["within_3px"] += bool(d <= 3)
                count["within_6px"] += bool(d <= 6)
                count["in_own_box"] += bool(box[0] <= x <= box[2] and box[1] <= y <= box[3])
    return {"points": count["points"], **{k: round(v / max(1, count["points"]), 3) for k, v in count.items() if k != "points"}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("ceiling")
    c.add_argument("data")
    c.add_argument("--sam", required=True)
    c.add_argument("--n", type=int, default=0, help="the first N test scenes (default: all)")
    q = sub.add_parser("points")
    q.add_argument("predictions")
    q.add_argument("data")
    q.add_argument("--processor", default=str(GROUNDING_VLM), help="the grounding VLM's folder (for its processor)")
    args = p.parse_args()
    out = ceiling(args.data, args.sam, args.n) if args.what == "ceiling" else points(args.predictions, args.data, args.processor)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
