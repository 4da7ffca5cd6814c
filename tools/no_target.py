"""Which no-target requests a model answers with a mask anyway: split by whether the named shape's colour, or its
kind, is in the picture, and by colour.

    python -m tools.no_target build/eval/grounding-grpo-u-rich/predictions.jsonl build/fresh-rich [MORE PAIRS]

Pairs of (predictions.jsonl of `vlmsam evaluate`, the synthetic dataset it ran on); their counts are added up. A
no-target request's answer names the shape that is not there ("There is no purple star in this image."); the
scene's own ``scene`` list says what is."""

from __future__ import annotations

import argparse
import json
from collections import Counter

from vlmsam.data.synth import absent_named, scene_files


def tally(predictions: str, dataset_dir: str, split: str = "test") -> tuple[Counter, Counter]:
    """(asked, missed): no-target requests counted by group, and those of them answered with a mask."""
    answered = {p["image"]: bool(p["masks"]) for p in map(json.loads, open(predictions))}
    asked, missed = Counter(), Counter()
    for path in scene_files(dataset_dir, split):
        scene = json.loads(path.read_text())
        named = absent_named(scene.get("answer", "")) if scene.get("kind") == "none" else None
        if named is None or path.stem not in answered:
            continue
        colour, kind = named.split(" ")
        groups = (f"its colour in the picture: {any(s['color'] == colour for s in scene['scene'])}",
                  f"its kind in the picture: {any(s['shape'] == kind for s in scene['scene'])}", f"colour {colour}")
        asked.update(groups)
        missed.update(groups if answered[path.stem] else ())
    return asked, missed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="predictions.jsonl dataset_dir [predictions.jsonl dataset_dir ...]")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    if len(args.pairs) % 2:
        parser.error("give predictions and a dataset folder in pairs")
    asked, missed = Counter(), Counter()
    for predictions, dataset_dir in zip(args.pairs[::2], args.pairs[1::2]):
        a, m = tally(predictions, dataset_dir, args.split)
        asked.update(a)
        missed.update(m)
    for group in sorted(asked):
        print(f"{group}: {missed[group]} of {asked[group]} answered with a mask ({missed[group] / asked[group]:.1%})")


if __name__ == "__main__":
    main()
