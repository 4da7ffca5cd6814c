"""The GRPO stage of vlmsam-tiny-grounding (``make box-prompt-model-grpo``): the run's ``final/`` becomes the
bundle only if its gIoU summed over the three wording splits of the 500 fresh test scenes beats the installed
one's (both evaluated the same way) and its mask for ``make demo``'s request covers the right shape."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from tools.bundles import EVAL_RECORDS, beats_installed, file_evaluation, share_parts
from vlmsam.engine.registry import DEFAULT_MODEL_DIR

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEMO_REQUEST = "Find the one shape that is below the orange hexagon."  # make demo's
DEMO_COVERAGE = 0.75  # share of the demo's target the mask must cover: run D's covers 0.87 of it, run E's 0.64 (docs/rl.md)


def demo_coverage(model: str | Path) -> tuple[float, float]:
    """The share of ``make demo``'s target (examples/scene.json, the white triangle) that ``model``'s mask for the
    demo request covers, and the mask's IoU with it."""
    from vlmsam.data.reason_seg import mask_from_shapes, read_annotation
    from vlmsam.segmenter import load_segmenter

    anno = read_annotation(EXAMPLES / "scene.json")
    truth = mask_from_shapes(anno["shapes"], anno["imageHeight"], anno["imageWidth"], EXAMPLES / "scene.json") == 1
    masks = load_segmenter(str(model)).segment(DEMO_REQUEST, image=str(EXAMPLES / "scene.jpg")).masks
    mask = masks.any(0) if len(masks) else np.zeros_like(truth)
    return float((mask & truth).sum() / truth.sum()), float((mask & truth).sum() / max(1, (mask | truth).sum()))


def install_if_better(run: str | Path, bundle: str | Path, eval_dir: str | Path, records: str | Path = EVAL_RECORDS) -> bool:
    """Install ``run/final`` as ``bundle`` when its gIoU summed over the splits (``eval_dir`` names the original
    wording's; ``-rich`` and ``-heldout`` beside it) beats the bundle's own record and its demo mask covers at least
    ``DEMO_COVERAGE`` of the demo's target; the bundle's SAM is kept (the run never trains it). Returns whether it
    installed. The evaluations' predictions and pictures go to ``records``."""
    run, bundle = Path(run), Path(bundle)
    if not beats_installed(str(eval_dir).removesuffix("-original"), bundle):
        return False
    covered, iou = demo_coverage(run / "final")
    print(f"make demo's request: the mask covers {covered:.0%} of the target (IoU {iou:.2f})")
    if covered < DEMO_COVERAGE:
        print(f"the installed bundle stays (the demo's target is covered less than {DEMO_COVERAGE:.0%})")
        return False
    settings = json.loads((bundle / "vlmsam_config.json").read_text())
    provenance = json.loads((bundle / "provenance.json").read_text())
    shutil.rmtree(bundle / "vlm")
    shutil.copytree(run / "final" / "vlm", bundle / "vlm")
    sam = run_sam(run)
    if not _same_folder(sam, bundle / settings["sam"]):  # the run was rewarded through another SAM: it comes along
        if (bundle / "sam").is_dir():
            shutil.rmtree(bundle / "sam")
        shutil.copytree(sam, bundle / "sam")
        settings["sam"] = "sam"
        provenance["sam"] = f"the SAM the GRPO run was rewarded through ({sam})"
    settings["max_new_tokens"] = json.loads((run / "final" / "vlmsam_config.json").read_text())["max_new_tokens"]
    (bundle / "vlmsam_config.json").write_text(json.dumps(settings, indent=2))
    provenance["made_by"] += ", then configs/box_prompt_tiny_grpo.yaml (GRPO, SAM-R1's reward; make box-prompt-model-grpo)"
    provenance["grpo_run"] = str(run)
    (bundle / "provenance.json").write_text(json.dumps(provenance, indent=2))
    shutil.copy(run / "config.yaml", bundle / "grpo_config.yaml")
    if settings["sam"] == "sam" and not share_parts(bundle, ("sam",)):  # vlmsam-tiny's, else llmseg's point-trained one
        share_parts(bundle, ("sam",), DEFAULT_MODEL_DIR.parent / "vlmsam-tiny-llmseg")
    for split in ("original", "rich", "heldout"):  # the run's evaluations become the bundle's record
        found = Path(str(eval_dir).replace("-original", f"-{split}"))
        if (found / "metrics.json").is_file():
            file_evaluation(found, bundle, records, split="" if split == "original" else split)
    return True


def run_sam(run: Path) -> Path:
    """The SAM a GRPO run's ``final/`` names (its config's ``model.sam``, a folder)."""
    named = Path(json.loads((run / "final" / "vlmsam_config.json").read_text())["sam"])
    return named if named.is_absolute() else (run / "final" / named)


def _same_folder(a: Path, b: Path) -> bool:
    """Both folders hold the same files, byte for byte."""
    import filecmp

    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return (files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
            and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files))
