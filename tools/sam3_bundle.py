"""The offline tiny SAM 3 (``make sam3-model``): a phrase-training checkpoint installed as the bundle
``weights/sam3-tiny`` (grounded's default), with its config, provenance and measured figures."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)


def choose_threshold(checkpoint: str | Path, val_dir: str | Path, n: int = 100) -> tuple[float, dict]:
    """The score threshold (Meta's 0.5 or lower: a tiny model is calibrated differently) with the best instance F1
    at mask IoU 0.5 on ``n`` validation scenes (never the test scenes), the usual operating point of a detector;
    it is written into the checkpoint's config."""
    from vlmsam.evaluation.phrases import evaluate_phrases, synthetic_cases
    from vlmsam.sam import load_sam_backend

    sam3 = load_sam_backend(Path(checkpoint) / "sam")
    table = {}
    for t in THRESHOLDS:
        m, _ = evaluate_phrases(sam3, synthetic_cases(val_dir, "val", n), threshold=t, progress=False)
        f1 = 2 * m["instance_recall"] * m["instance_precision"] / max(1e-9, m["instance_recall"] + m["instance_precision"])
        table[t] = {"f1": round(f1, 4), **{k: m[k] for k in ("instance_recall", "instance_precision", "matched_iou", "no_target_empty")}}
        print(f"threshold {t}: {table[t]}")
    best = max(THRESHOLDS, key=lambda t: table[t]["f1"])
    config_path = Path(checkpoint) / "vlmsam_config.json"
    config = json.loads(config_path.read_text())
    config["score_threshold"] = best
    config_path.write_text(json.dumps(config, indent=2))
    print(f"score threshold {best} (chosen on {n} validation scenes of {val_dir})")
    return best, table


def install(checkpoint: str | Path, bundle: str | Path, eval_dir: str | Path, record: str | Path | None = None) -> Path:
    """Copy ``checkpoint`` (a grounded checkpoint on SAM 3) to ``bundle`` with ``eval_dir/metrics.json`` as its
    model card's figures; ``eval_dir/summary.png`` goes to ``record`` (docs/bundled/sam3-tiny), not the package."""
    checkpoint, bundle, eval_dir = Path(checkpoint), Path(bundle), Path(eval_dir)
    run = checkpoint.parent.parent
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    if bundle.exists():
        shutil.rmtree(bundle)
    bundle.mkdir(parents=True)
    shutil.copytree(checkpoint / "sam", bundle / "sam")
    shutil.copy(checkpoint / "vlmsam_config.json", bundle / "vlmsam_config.json")
    shutil.copy(run / "config.yaml", bundle / "train_config.yaml")
    (bundle / "eval").mkdir()
    shutil.copy(eval_dir / "metrics.json", bundle / "eval" / "metrics.json")
    sam_config = json.loads((checkpoint / "sam" / "config.json").read_text())
    weights = sum(f.stat().st_size for f in (bundle / "sam").glob("*.safetensors"))
    provenance = {
        "design": "grounded",
        "made_by": "make sam3-model: configs/sam3_tiny.yaml (vlmsam train, model.model_type: grounded, model.sam: tiny) "
                   "on build/synth-rich's training scenes, from random weights",
        "run": str(run), "checkpoint": checkpoint.name,
        "model": "transformers' Sam3Model (detector only; no Sam3TrackerModel, so no point/box prompts)",
        "vit": {k: sam_config["vision_config"]["backbone_config"][k] for k in ("hidden_size", "num_hidden_layers", "image_size", "patch_size")},
        "queries": sam_config["detr_decoder_config"]["num_queries"],
        "tokenizer": "a CLIP BPE over byte characters with one merge chain per scene word (vlmsam/sam/sam3_tiny.py)",
        "weights_bytes": weights,
        "phrases": "vlmsam/data/phrases.py: colour / shape / colour + shape, singular or plural, some with 'the' or 'all', "
                   "and phrases naming nothing present (30 %)",
        "not": "Meta's SAM 3 or a distillation of it: a model of the same class trained from scratch on synthetic shapes",
        "test": {"scenes": "500 fresh test scenes (vlmsam data synth --seed 7), never trained on", **metrics},
    }
    (bundle / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    if record is not None and (eval_dir / "summary.png").is_file():
        Path(record).mkdir(parents=True, exist_ok=True)
        shutil.copy(eval_dir / "summary.png", Path(record) / "summary.png")
    print(f"installed {checkpoint} as {bundle} ({weights / 1e6:.1f} MB of weights); test figures: "
          + ", ".join(f"{k} {metrics[k]}" for k in ("instance_recall", "matched_iou", "no_target_empty", "mask_ap")))
    return bundle


if __name__ == "__main__":
    if sys.argv[1] == "threshold":
        choose_threshold(sys.argv[2], sys.argv[3])
    else:
        install(*sys.argv[1:5])
