"""Evaluation by generation: every request of an evaluation split answered with the real
generation path, scored with LISA's metrics, sharded across torchrun ranks.

Writes ``metrics.json`` (``giou``, ``ciou``, ``n``, ``skipped_samples``; for ReasonSeg also
``short_query`` / ``long_query``), ``predictions.jsonl`` (``{"image", "query", "answer", "masks": [COCO
RLE]}`` per request, appended as the run goes and in dataset order at the end, whatever the number of
ranks) and ``summary.png`` (best and worst cases). A bad sample (see :mod:`vlmsam.data.validate`) is
skipped and counted, or stops the run under ``on_bad_sample="error"``; ``resume`` takes back the
predictions an interrupted run wrote. :func:`score_predictions` scores such a file without any model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vlmsam.data.base import SegDataset
from vlmsam.data.sample import BROKEN_ANNOTATION, UNREADABLE_IMAGE, BadSample
from vlmsam.data.validate import SkippedSamples, load_checked
from vlmsam.errors import VlmsamError
from vlmsam.evaluation import predictions as pred_file
from vlmsam.evaluation.predictions import read_predictions  # noqa: F401 -- re-exported
from vlmsam.evaluation.scoring import Scorer
from vlmsam.evaluation.summary import summary_png
from vlmsam.io.result_set import write_set
from vlmsam.io.writer import check_rle, mask_to_rle, rle_to_mask
from vlmsam.distributed import DistInfo, barrier, gather_objects


def _requests(sample):
    """(prompt, target, raw query, is_sentence, kind, phrasing) for each request of an evaluation sample
    (kind and phrasing: what synthetic scenes record, else None)."""
    unknown = [None] * len(sample.masks)
    return list(zip([c[0][0] for c in sample.conversations], sample.masks, sample.meta["queries"],
                    sample.meta["is_sentence"], sample.meta.get("kinds") or unknown, sample.meta.get("phrasings") or unknown))


def saved_masks(line: dict, shape: tuple[int, int]) -> np.ndarray:
    """The ``(N, H, W) bool`` masks of a prediction line, each checked against the target's ``shape``
    before it is decoded (ValueError / TypeError / KeyError if one is not usable)."""
    for m in line["masks"]:  # sizes and run lengths first: nothing is decoded that does not fit
        check_rle(m, shape)
    return np.stack([rle_to_mask(m) for m in line["masks"]]) if line["masks"] else np.zeros((0, *shape), bool)


def _kept(done: dict, stem: str, query: str, shape: tuple[int, int]):
    """``(line, masks)`` of a prediction an interrupted run wrote for this request, else None."""
    queue = done.get((stem, query))
    while queue:
        line = queue.popleft()
        try:
            return line, saved_masks(line, shape)
        except Exception:  # an unusable saved line is answered again
            continue
    return None


def _answer(segmenter, sample, image, requests, todo: list[int], max_new_tokens: int) -> dict:
    """request index -> (line, masks) for the requests in ``todo``, in one ``segment_many``."""
    if not todo:
        return {}
    try:
        encoded = segmenter.encode(image)
    except VlmsamError as exc:
        raise BadSample(sample.where, f"the segmenter cannot encode it ({exc})", UNREADABLE_IMAGE) from None
    try:
        results = segmenter.segment_many(encoded, [requests[j][2] for j in todo],
                                         is_sentence=[requests[j][3] for j in todo], max_new_tokens=max_new_tokens)
    except VlmsamError as exc:
        raise BadSample(sample.where, f"a request cannot be answered ({exc})", BROKEN_ANNOTATION) from None
    stem = Path(sample.image).stem
    return {j: ({"image": stem, "query": requests[j][2], "answer": r.text, "masks": [mask_to_rle(m) for m in r.masks],
                 **({"turns": r.info["turns"]} if "turns" in r.info else {})},  # an agent's VLM turns
                r.masks) for j, r in zip(todo, results)}


def evaluate(segmenter, ds: SegDataset, *, info: DistInfo = DistInfo(), out_dir: Path | None = None,
             max_new_tokens: int = 128, limit: int = 0, progress: bool = True, on_bad_sample: str = "skip",
             resume: bool = False, print_fn=None) -> dict:
    """Answer and score every request of ``ds`` (the first ``limit`` images if set) with any segmenter
    of the engine (``encode`` once per image, then its requests in one ``segment_many``). Every rank
    returns the same metrics; rank 0 writes the files when ``out_dir`` is given. With ``resume``, the
    predictions already in ``out_dir`` are kept, not answered again. ``print_fn`` (rank 0) is told what
    was resumed and skipped."""
    scorer = Scorer(split_by_length=ds.source == "reason_seg")
    skipped = SkippedSamples(on_bad_sample)
    if limit < 0:
        raise VlmsamError(f"--limit {limit}: give a positive number of images (0 = all)")
    n = min(limit, len(ds)) if limit else len(ds)
    if n == 0:
        raise VlmsamError(f"{ds}: the split has no images to evaluate")
    done = pred_file.read_done(out_dir) if resume and out_dir is not None else {}
    barrier()  # every rank has read the files before any is truncated
    log = pred_file.PredictionLog(out_dir, info.rank, info.world_size, resume) if out_dir is not None else None
    cases, kept = [], 0
    try:
        for i in tqdm(range(info.rank, n, info.world_size), desc="evaluate", unit="image",
                      disable=not (progress and info.is_main)):
            try:
                sample, image = load_checked(ds, i)
                requests = _requests(sample)
                stem = Path(sample.image).stem
                answered = {j: _kept(done, stem, r[2], r[1].shape) for j, r in enumerate(requests)}
                answered = {j: a for j, a in answered.items() if a is not None}
                new = _answer(segmenter, sample, image, requests, [j for j in range(len(requests)) if j not in answered],
                              max_new_tokens)
            except BadSample as exc:
                skipped.add(exc)
                continue
            kept += len(answered)
            if log is not None:
                log.append([new[j][0] for j in sorted(new)])  # flushed: a kill keeps this sample
            answered.update(new)
            for j, (_, target, _, is_sentence, kind, phrasing) in enumerate(requests):
                line, masks = answered[j]
                iou = scorer.update(masks, target, is_sentence, kind, phrasing)
                cases.append({"order": (i, j), "iou": iou, "image_path": str(sample.image), "line": line})
    finally:
        if log is not None:
            log.close()
    return _finish(scorer, skipped, cases, kept, ds, info, out_dir, print_fn if info.is_main else None)


def _finish(scorer: Scorer, skipped: SkippedSamples, cases: list, kept: int, ds, info: DistInfo, out_dir,
            print_fn) -> dict:
    """All ranks' scores, skips and cases together; rank 0 writes the files."""
    scorer.all_reduce()
    merged = SkippedSamples()
    for part in gather_objects(skipped.as_dict()):
        merged.merge(part)
    total = len(merged)
    metrics = scorer.metrics()
    if metrics["n"] == 0:  # every sample was bad: nothing was evaluated, which is not a result
        raise VlmsamError(f"{ds}: no request could be evaluated ({total} sample(s) skipped"
                          + (", e.g. {}: {}".format(*next(iter(merged.paths.items()))) if merged.paths else "") + ")")
    everything = sorted((x for part in gather_objects(cases) for x in part), key=lambda x: x["order"])
    kept = sum(gather_objects(kept))
    metrics["skipped_samples"] = merged.metrics()
    turns = [x["line"]["turns"] for x in everything if "turns" in x["line"]]
    if turns:
        metrics["mean_turns"] = round(sum(turns) / len(turns), 3)
    if print_fn is not None and kept:
        print_fn(f"resumed: {kept} prediction(s) kept from {Path(out_dir) / pred_file.FILE}")
    if print_fn is not None and total:
        print_fn(merged.summary())
    if out_dir is not None and info.is_main:
        pred_file.finish(out_dir, [x["line"] for x in everything])
        write_outputs(Path(out_dir), metrics, ds, everything)
    return metrics


def write_outputs(out: Path, metrics: dict, ds: SegDataset, cases: list[dict]) -> None:
    """``summary.png`` and ``metrics.json`` as one set (the predictions are written by the caller)."""
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
    png = summary_png([as_case(c) for c in best], [as_case(c) for c in worst])
    write_set(out, ([("summary.png", png)] if png is not None else []) + [
        ("metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())], unit=f"{out}'s metrics")


def score_predictions(*args, **kwargs) -> dict:
    """See :func:`vlmsam.evaluation.score.score_predictions`."""
    from vlmsam.evaluation.score import score_predictions as score

    return score(*args, **kwargs)
