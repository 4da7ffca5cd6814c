"""What goes wrong with uniqueness requests ("the shape whose colour appears only once"): each prediction of an
evaluation sorted into one outcome by the scene it was asked about.

    python -m tools.uniqueness build/eval/vlmsam-tiny-original/predictions.jsonl build/fresh-original

Outcomes: ``right`` (the predicted mask's best-covered shape is the target, IoU printed), ``refused`` (no mask),
``shared`` (a shape whose colour / type another shape also has), ``several`` (masks over more than one shape)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from vlmsam.data.synth import scene_files, visible_masks


def _attribute(what: str) -> str:
    return "color" if "colo" in what else "shape"


def outcome(prediction: dict, scene: dict) -> tuple[str, float]:
    """``(outcome, IoU with the target)`` of one uniqueness prediction against its scene json."""
    h, w = scene["imageHeight"], scene["imageWidth"]
    shapes = visible_masks(scene["scene"], h, w)
    target = shapes[-1]  # the target is painted last (make_scene: others first, then the targets)
    if not prediction["masks"]:
        return "refused", 0.0
    union = np.zeros((h, w), bool)
    for rle in prediction["masks"]:
        union |= mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
    iou = float((union & target).sum() / max((union | target).sum(), 1))
    covered = [k for k, m in enumerate(shapes) if m.sum() and (union & m).sum() > 0.5 * m.sum()]
    if len(covered) > 1:
        return "several", iou
    best = int(np.argmax([(union & m).sum() for m in shapes]))
    return ("right" if best == len(shapes) - 1 else "shared"), iou


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions")
    parser.add_argument("dataset_dir")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    scenes = {p.stem: json.loads(p.read_text()) for p in scene_files(args.dataset_dir, args.split)}
    counts, ious, by_attribute = Counter(), [], Counter()
    for line in Path(args.predictions).read_text().splitlines():
        prediction = json.loads(line)
        scene = scenes[prediction["image"]]
        if scene.get("kind") != "uniqueness":
            continue
        result, iou = outcome(prediction, scene)
        counts[result] += 1
        by_attribute[(_attribute(scene["text"][0].lower()), result)] += 1
        if result == "right":
            ious.append(iou)
    total = sum(counts.values())
    print(json.dumps({"n": total, **{k: round(v / total, 3) for k, v in counts.most_common()},
                      "iou_when_right": round(float(np.mean(ious)), 3) if ious else None,
                      "by_attribute": {f"{a}/{r}": n for (a, r), n in sorted(by_attribute.items())}}))


if __name__ == "__main__":
    main()
