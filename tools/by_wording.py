"""gIoU of an evaluation split by whether the request holds a phrase: how much of a split's score one wording costs.

    python -m tools.by_wording build/eval/vlmsam-tiny-heldout/predictions.jsonl build/fresh-heldout "mask over"

Each request's IoU is computed as `vlmsam evaluate` does for gIoU (the union of the predicted masks against the
union of the targets; 1 when both are empty); the requests that hold the phrase (case-insensitive) and the rest
are averaged apart, with their counts and their no-target refusal rates."""

from __future__ import annotations

import argparse
import json

import numpy as np
from pycocotools import mask as mask_utils

from vlmsam.data.masks import fill_polygon
from vlmsam.data.synth import scene_files


def request_iou(prediction: dict, scene: dict) -> float:
    h, w = scene["imageHeight"], scene["imageWidth"]
    truth = np.zeros((h, w), bool)
    for shape in scene["shapes"]:
        truth |= fill_polygon(shape["points"], h, w).astype(bool)
    predicted = np.zeros((h, w), bool)
    for rle in prediction["masks"]:
        predicted |= mask_utils.decode(rle).astype(bool)
    union = (truth | predicted).sum()
    return 1.0 if union == 0 else float((truth & predicted).sum() / union)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions")
    parser.add_argument("dataset_dir")
    parser.add_argument("phrase")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    predictions = {p["image"]: p for p in map(json.loads, open(args.predictions))}
    groups: dict[bool, list] = {True: [], False: []}
    for path in scene_files(args.dataset_dir, args.split):
        scene = json.loads(path.read_text())
        if path.stem in predictions:
            holds = args.phrase.lower() in scene["text"][0].lower()
            groups[holds].append((request_iou(predictions[path.stem], scene), scene.get("kind") == "none",
                                  not predictions[path.stem]["masks"]))
    everything = groups[True] + groups[False]
    for name, rows in ((f'with "{args.phrase}"', groups[True]), ("without", groups[False]), ("all", everything)):
        if rows:
            none = [refused for _, is_none, refused in rows if is_none]
            rate = f"{np.mean(none):.1%} of {len(none)}" if none else "-"
            print(f"{name}: {len(rows)} requests, gIoU {np.mean([r[0] for r in rows]):.3f}, no target refused {rate}")


if __name__ == "__main__":
    main()
