"""``vlmsam score``: a predictions file (any system's) against an evaluation split, with the metrics,
the sample checks and the bad-sample policy of ``vlmsam evaluate`` and no model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from vlmsam.data.base import SegDataset
from vlmsam.data.sample import BadSample
from vlmsam.data.validate import SkippedSamples, load_checked
from vlmsam.errors import VlmsamError
from vlmsam.evaluation.evaluate import _requests, saved_masks, write_outputs
from vlmsam.evaluation.predictions import read_predictions
from vlmsam.evaluation.scoring import Scorer


def score_predictions(path: str | Path, ds: SegDataset, out_dir: Path | None = None, progress: bool = True,
                      on_bad_sample: str = "skip", print_fn=None) -> dict:
    """Score a predictions file against ``ds`` with the metrics of :func:`~vlmsam.evaluation.evaluate.evaluate`.

    A request with no prediction scores as an empty mask and is counted as ``missing``; a sample that
    ``evaluate`` would skip (missing or unusable image, broken annotation) is skipped and counted in
    ``skipped_samples`` the same way, or stops the scoring under ``on_bad_sample="error"``. A
    prediction line whose mask does not fit its target is an error (the file is the user's)."""
    path = Path(path)
    predictions = read_predictions(path)
    scorer = Scorer(split_by_length=ds.source == "reason_seg")
    skipped = SkippedSamples(on_bad_sample)
    missing, cases = 0, []
    for i in tqdm(range(len(ds)), desc="score", unit="image", disable=not progress or len(ds) < 50):
        try:
            sample, _ = load_checked(ds, i)
        except BadSample as exc:
            skipped.add(exc)
            continue
        stem = Path(sample.image).stem
        for j, (_, target, query, is_sentence, kind, phrasing) in enumerate(_requests(sample)):
            queue = predictions.get((stem, query))
            if queue:
                line = queue.pop(0)
                try:
                    masks = saved_masks(line, target.shape)
                except Exception as exc:
                    raise VlmsamError(f"{path}: a mask of ({stem!r}, {query!r}) is not usable ({exc})") from None
            else:
                missing += 1
                line, masks = {"image": stem, "query": query, "answer": "", "masks": []}, np.zeros((0, *target.shape), bool)
            iou = scorer.update(masks, target, is_sentence, kind, phrasing)
            cases.append({"order": (i, j), "iou": iou, "image_path": str(sample.image), "line": line})
    metrics = scorer.metrics()
    if metrics["n"] == 0:
        raise VlmsamError(f"{ds}: no request could be scored ({len(skipped)} sample(s) skipped"
                          + (", e.g. {}: {}".format(*next(iter(skipped.paths.items()))) if skipped.paths else "") + ")")
    metrics["missing"] = missing
    metrics["unmatched"] = sum(len(q) for q in predictions.values())
    metrics["skipped_samples"] = skipped.metrics()
    if print_fn is not None and len(skipped):
        print_fn(skipped.summary())
    if out_dir is not None:
        write_outputs(Path(out_dir), metrics, ds, cases)  # the predictions are the user's file
    return metrics
