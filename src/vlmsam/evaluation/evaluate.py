"""Evaluation by generation: every request of an evaluation split answered with the real
generation path, scored with LISA's metrics, sharded across torchrun ranks.

Writes ``metrics.json`` (``giou``, ``ciou``, ``n``; for ReasonSeg also ``short_query`` /
``long_query``), ``predictions.jsonl`` (``{"image", "query", "answer", "masks": [COCO RLE]}`` per
request, in dataset order whatever the number of ranks) and ``summary.png`` (best and worst cases).
:func:`score_predictions` scores such a file without any model.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vlmsam.data.base import SegDataset
from vlmsam.data.sample import BadSample
from vlmsam.errors import VlmsamError
from vlmsam.evaluation.scoring import Scorer
from vlmsam.evaluation.summary import write_summary
from vlmsam.io.writer import atomic_write_bytes, check_rle, mask_to_rle, rle_to_mask
from vlmsam.train.distributed import DistInfo, gather_objects


def _requests(sample):
    """(prompt, target, raw query, is_sentence, kind) for each request of an evaluation sample."""
    kinds = sample.meta.get("kinds") or [None] * len(sample.masks)
    return zip([c[0][0] for c in sample.conversations], sample.masks, sample.meta["queries"], sample.meta["is_sentence"], kinds)


def evaluate(segmenter, ds: SegDataset, *, info: DistInfo = DistInfo(), out_dir: Path | None = None,
             max_new_tokens: int = 128, limit: int = 0, progress: bool = True) -> dict:
    """Answer and score every request of ``ds`` (the first ``limit`` images if set) with any segmenter
    of the engine (``encode`` once per image, then all of its requests in one ``segment_many``;
    each request is the raw query and whether it is a sentence). Every rank returns the same
    metrics; rank 0 writes the files when ``out_dir`` is given."""
    scorer = Scorer(split_by_length=ds.source == "reason_seg")
    if limit < 0:
        raise VlmsamError(f"--limit {limit}: give a positive number of images (0 = all)")
    n = min(limit, len(ds)) if limit else len(ds)
    if n == 0:
        raise VlmsamError(f"{ds}: the split has no images to evaluate")
    lines, skipped = [], []
    for i in tqdm(range(info.rank, n, info.world_size), desc="evaluate", unit="image",
                  disable=not (progress and info.is_main)):
        try:
            sample = ds.load_eval(i)
            encoded = segmenter.encode(sample.image)
        except (BadSample, VlmsamError) as exc:
            skipped.append(str(exc))
            continue
        requests = list(_requests(sample))
        results = segmenter.segment_many(encoded, [q for _, _, q, _, _ in requests],
                                         is_sentence=[s for _, _, _, s, _ in requests], max_new_tokens=max_new_tokens)
        for j, ((_, target, query, is_sentence, kind), result) in enumerate(zip(requests, results)):
            iou = scorer.update(result.masks, target, is_sentence, kind)
            lines.append({"order": (i, j), "iou": iou, "image_path": str(sample.image), "line": {
                "image": Path(sample.image).stem, "query": query, "answer": result.text,
                "masks": [mask_to_rle(m) for m in result.masks]}})
    scorer.all_reduce()
    metrics = scorer.metrics()
    if metrics["n"] == 0:  # every image was unreadable: nothing was evaluated, which is not a result
        raise VlmsamError(f"{ds}: no request could be evaluated ({len(skipped)} image(s) skipped"
                          + (f", e.g. {skipped[0]}" if skipped else "") + ")")
    everything = sorted((x for part in gather_objects(lines) for x in part), key=lambda x: x["order"])
    all_skipped = [s for part in gather_objects(skipped) for s in part]
    if all_skipped:
        metrics["skipped_images"] = len(all_skipped)
    if out_dir is not None and info.is_main:
        write_outputs(Path(out_dir), metrics, [x["line"] for x in everything], ds, everything)
    return metrics


def write_outputs(out: Path, metrics: dict, lines: list[dict] | None, ds: SegDataset, cases: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
    if lines is not None:
        atomic_write_bytes(out / "predictions.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode())
    ranked = sorted(cases, key=lambda c: -c["iou"])
    # The best cases worth looking at have a mask (a correctly refused request shows nothing); the
    # worst are the others, so no case appears twice when there are fewer than eight.
    best = [c for c in ranked if c["line"]["masks"]][:4] or ranked[:4]
    worst = [c for c in reversed(ranked) if c not in best][:4]
    targets = {}
    for c in best + worst:
        i, j = c["order"]
        if i not in targets:
            targets[i] = ds.load_eval(i).masks
    as_case = lambda c: {"image_path": c["image_path"], "query": c["line"]["query"], "iou": c["iou"],  # noqa: E731
                         "pred_rles": c["line"]["masks"], "target": targets[c["order"][0]][c["order"][1]]}
    write_summary([as_case(c) for c in best], [as_case(c) for c in worst], out / "summary.png")


def read_predictions(path: Path) -> dict[tuple[str, str], list[dict]]:
    """``(image stem, query)`` -> the prediction lines with that key, in file order."""
    from vlmsam.io.files import loads, read_text

    what = 'a predictions.jsonl ({"image": STEM, "query": TEXT, "answer": TEXT, "masks": [RLE, ...]} per line)'
    by_key = defaultdict(list)
    for k, text in enumerate(read_text(path, what).splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = loads(text)
            key = (str(line["image"]), str(line["query"]))
            masks = line.get("masks", [])
            if not isinstance(masks, list):
                raise TypeError("masks must be a list")
        except (ValueError, KeyError, TypeError) as exc:
            raise VlmsamError(f"{path}:{k}: not a prediction line ({type(exc).__name__}: {exc}); "
                              'expected {"image": STEM, "query": TEXT, "answer": TEXT, "masks": [RLE, ...]}') from None
        by_key[key].append(line)
    return by_key


def score_predictions(path: str | Path, ds: SegDataset, out_dir: Path | None = None, progress: bool = True) -> dict:
    """Score a predictions file against ``ds`` with the metrics of :func:`evaluate`. A request
    with no prediction scores as an empty mask and is counted as ``missing``."""
    path = Path(path)
    predictions = read_predictions(path)
    scorer = Scorer(split_by_length=ds.source == "reason_seg")
    missing, lines, cases = 0, [], []
    for i in tqdm(range(len(ds)), desc="score", unit="image", disable=not progress or len(ds) < 50):
        sample = ds.load_eval(i)
        stem = Path(sample.image).stem
        for j, (_, target, query, is_sentence, kind) in enumerate(_requests(sample)):
            queue = predictions.get((stem, query))
            if queue:
                line = queue.pop(0)
                try:
                    for m in line["masks"]:  # sizes and run lengths first: nothing is decoded that does not fit
                        check_rle(m, target.shape)
                    masks = np.stack([rle_to_mask(m) for m in line["masks"]]) if line["masks"] else np.zeros((0, *target.shape), bool)
                except Exception as exc:
                    raise VlmsamError(f"{path}: a mask of ({stem!r}, {query!r}) is not usable ({exc})") from None
            else:
                missing += 1
                line, masks = {"image": stem, "query": query, "answer": "", "masks": []}, np.zeros((0, *target.shape), bool)
            iou = scorer.update(masks, target, is_sentence, kind)
            lines.append(line)
            cases.append({"order": (i, j), "iou": iou, "image_path": str(sample.image), "line": line})
    metrics = scorer.metrics()
    metrics["missing"] = missing
    metrics["unmatched"] = sum(len(q) for q in predictions.values())
    if out_dir is not None:
        write_outputs(Path(out_dir), metrics, None, ds, cases)  # the predictions are the user's file
    return metrics
