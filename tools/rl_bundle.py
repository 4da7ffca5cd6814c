"""The GRPO stage of vlmsam-tiny-grounding (``make box-prompt-model-grpo``): the run's ``final/`` becomes the
bundle only if its gIoU summed over the three wording splits of the 500 fresh test scenes beats the installed
one's (both evaluated the same way) and its mask for ``make demo``'s request covers the right shape."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from tools.bundles import EVAL_RECORDS, _files, _same, beats_installed, file_evaluation, share_parts

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEMO_COVERAGE = 0.75  # share of the demo's target the mask must cover: run D's covers 0.87 of it, run E's 0.64 (docs/rl.md)
DEMO_IOU = 0.5  # and no more of the mask off the target than on it: the U + S soup covers 91 % at IoU 0.38, half a hexagon too
RUN_SETTINGS = ("style", "union", "multimask", "prompt", "max_new_tokens")  # as evaluated, so as installed


def demo_coverage(model: str | Path) -> tuple[float, float]:
    """The share of ``make demo``'s target (examples/scene.json, the white triangle) that ``model``'s mask for the
    demo's request (the annotation's own text, as the Makefile asks it) covers, and the mask's IoU with it."""
    from vlmsam.data.reason_seg import mask_from_shapes, read_annotation
    from vlmsam.metrics.iou import intersection_union, pair_iou
    from vlmsam.segmenter import load_segmenter

    anno = read_annotation(EXAMPLES / "scene.json")
    truth = mask_from_shapes(anno["shapes"], anno["imageHeight"], anno["imageWidth"], EXAMPLES / "scene.json") == 1
    masks = load_segmenter(str(model)).segment(anno["text"][0], image=str(EXAMPLES / "scene.jpg")).masks
    mask = masks.any(0) if len(masks) else np.zeros_like(truth)
    inter, union = intersection_union(mask, truth)
    return float(inter / truth.sum()), pair_iou(inter, union)


def demo_wrong(covered: float, iou: float) -> str:
    """Why a mask for the demo's request is not the right shape ("" when it is): it must cover ``DEMO_COVERAGE`` of
    the target, and its IoU with it be at least ``DEMO_IOU`` (a mask over the target and a neighbour is not it)."""
    if covered < DEMO_COVERAGE:
        return f"the demo's target is covered less than {DEMO_COVERAGE:.0%}"
    if iou < DEMO_IOU:
        return f"the demo's mask has IoU {iou:.2f} with its target, under {DEMO_IOU}: it takes in a neighbour"
    return ""


def pair_with_bundle_sam(run: str | Path, bundle: str | Path) -> Path:
    """``run/paired``: the run's VLM and settings with the bundle's own SAM (for a run rewarded through another SAM
    that is to be installed with the bundle's, ``keep_sam``); evaluate it as a box_prompt checkpoint."""
    run, bundle = Path(run), Path(bundle)
    settings = json.loads((run / "final" / "vlmsam_config.json").read_text())
    sam = (bundle / json.loads((bundle / "vlmsam_config.json").read_text())["sam"]).resolve()
    out = run / "paired"
    out.mkdir(exist_ok=True)
    settings.update(vlm=str((run / "final" / "vlm").resolve()), sam=str(sam))
    (out / "vlmsam_config.json").write_text(json.dumps(settings, indent=2))
    return out


def install_if_better(run: str | Path, bundle: str | Path, eval_dir: str | Path, records: str | Path = EVAL_RECORDS,
                      *, keep_sam: bool = False, made_by: str = "") -> bool:
    """Install ``run/final`` as ``bundle`` when its gIoU summed over the splits (``eval_dir`` names the original
    wording's; ``-rich`` and ``-heldout`` beside it) beats the bundle's own record and its mask for the demo's request
    is the right shape (:func:`demo_wrong`). The run's VLM and settings replace the bundle's; so does its SAM where the
    run was rewarded through another, unless ``keep_sam`` (then the evaluations are of ``pair_with_bundle_sam``'s
    pairing). ``made_by`` says how the run was made (default: the GRPO stage). The new bundle is made beside the old
    one and swapped in whole, so a failure leaves the installed bundle as it was. The evaluations' predictions and
    pictures go to ``records``."""
    run, bundle = Path(run), Path(bundle)
    prefix = str(eval_dir).removesuffix("-original")
    if not beats_installed(prefix, bundle):
        return False
    covered, iou = demo_coverage(pair_with_bundle_sam(run, bundle) if keep_sam else run / "final")
    print(f"make demo's request: the mask covers {covered:.0%} of the target (IoU {iou:.2f})")
    wrong = demo_wrong(covered, iou)
    if wrong:
        print(f"the installed bundle stays ({wrong})")
        return False
    evaluations = [Path(f"{prefix}-{split}") for split in ("original", "rich", "heldout")]
    missing = [str(e / f) for e in evaluations for f in ("metrics.json", "predictions.jsonl", "summary.png") if not (e / f).is_file()]
    if missing:
        raise FileNotFoundError(f"the run's evaluations lack {', '.join(missing)}; run `vlmsam evaluate` on every split first")
    new = bundle.with_name(bundle.name + ".new")
    shutil.rmtree(new, ignore_errors=True)
    try:
        _make(run, bundle, new, keep_sam, made_by)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    old = bundle.with_name(bundle.name + ".old")
    bundle.rename(old)
    new.rename(bundle)
    shutil.rmtree(old)
    for split, found in zip(("", "rich", "heldout"), evaluations):  # the run's evaluations become the bundle's record
        file_evaluation(found, bundle, records, split=split)
    return True


def _make(run: Path, bundle: Path, new: Path, keep_sam: bool = False, made_by: str = "") -> None:
    """``new``: ``bundle`` with the run's VLM, settings and SAM (the bundle's own with ``keep_sam``); its SAM shared
    by a path where it is byte for byte vlmsam-tiny's or vlmsam-tiny-llmseg's (the point-trained one), the bundle's
    siblings."""
    settings = json.loads((bundle / "vlmsam_config.json").read_text())
    ran = json.loads((run / "final" / "vlmsam_config.json").read_text())
    rewarded_through = run_sam(run)
    sam = (bundle / settings["sam"]).resolve() if keep_sam else rewarded_through
    provenance = json.loads((bundle / "provenance.json").read_text())
    shutil.copytree(bundle, new, ignore=shutil.ignore_patterns("vlm", "sam", "eval"))
    shutil.copytree(run / "final" / "vlm", new / "vlm")
    settings.update({k: ran[k] for k in RUN_SETTINGS if k in ran})
    if _same_folder(sam, (bundle / settings["sam"]).resolve()):
        if settings["sam"] == "sam":
            shutil.copytree(bundle / "sam", new / "sam")
    else:  # the run was rewarded through another SAM: it comes along
        shutil.copytree(sam, new / "sam")
        settings["sam"] = "sam"
        provenance["sam"] = f"the SAM the GRPO run was rewarded through ({sam.parent.name}/{sam.name} when it ran)"
        if (sam / "interpolation.json").is_file():  # tools.bundles.interpolate made it: say of what
            mix = json.loads((sam / "interpolation.json").read_text())
            provenance["sam"] += ": " + " + ".join(f"{w:g} x {of}" for w, of in zip(mix["weights"], mix["of"]))
    (new / "vlmsam_config.json").write_text(json.dumps(settings, indent=2))
    made_by = made_by or "configs/box_prompt_tiny_grpo.yaml (GRPO, SAM-R1's reward; make box-prompt-model-grpo)"
    provenance["made_by"] += f", then {made_by}"
    provenance["grpo_run"] = str(run)
    ran_provenance = run / "final" / "provenance.json"
    soup_of = json.loads(ran_provenance.read_text()).get("soup_of") if ran_provenance.is_file() else None
    provenance.pop("soup_of", None)
    if soup_of:  # the run is a soup of GRPO runs (tools.bundles.soup): its ingredients, not the bundle's old ones
        provenance["soup_of"] = soup_of
    provenance.pop("grpo_reward_sam", None)  # the old run's; the SAM this one was rewarded through is said below
    if keep_sam and not _same_folder(rewarded_through, sam):
        provenance["grpo_reward_sam"] = f"{rewarded_through.parent.name}/{rewarded_through.name} (installed with the bundle's own SAM)"
    (new / "provenance.json").write_text(json.dumps(provenance, indent=2))
    shutil.copy(run / "config.yaml", new / "grpo_config.yaml")
    if settings["sam"] == "sam" and not share_parts(new, ("sam",), bundle.parent / "vlmsam-tiny"):
        share_parts(new, ("sam",), bundle.parent / "vlmsam-tiny-llmseg")


def run_sam(run: Path) -> Path:
    """The SAM folder a GRPO run's ``final/`` names (the export writes it resolved)."""
    named = Path(json.loads((run / "final" / "vlmsam_config.json").read_text())["sam"])
    sam = named if named.is_absolute() else run / "final" / named
    if not sam.is_dir():
        raise FileNotFoundError(f"{run}: the SAM its final/ names, {named}, is not a folder here; install the run where "
                                "it was trained, or name the SAM's folder in final/vlmsam_config.json")
    return sam


def _same_folder(a: Path, b: Path) -> bool:
    """Both folders exist and hold the same files, byte for byte."""
    return a.is_dir() and b.is_dir() and _files(a) == _files(b) and all(_same(a / f, b / f) for f in _files(a))
