"""The GRPO stage of vlmsam-tiny-grounding (``make box-prompt-model-grpo``): the run's ``final/`` becomes the
bundle only if it beats the installed one on the 500 fresh test scenes (both evaluated the same way)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tools.bundles import file_evaluation, giou, share_parts


def install_if_better(run: str | Path, bundle: str | Path, eval_dir: str | Path) -> bool:
    """Install ``run/final`` as ``bundle`` when its gIoU in ``eval_dir`` (original wording) beats the bundle's own
    ``eval/metrics.json``; the bundle's SAM is kept (the run never trains it). Returns whether it installed."""
    run, bundle = Path(run), Path(bundle)
    new, old = giou(eval_dir), giou(bundle / "eval")
    print(f"grpo run: gIoU {new:.3f} on the fresh test scenes; installed bundle: {old:.3f}")
    if new <= old:
        print("the installed bundle stays (the run does not beat it)")
        return False
    settings = json.loads((bundle / "vlmsam_config.json").read_text())
    provenance = json.loads((bundle / "provenance.json").read_text())
    shutil.rmtree(bundle / "vlm")
    shutil.copytree(run / "final" / "vlm", bundle / "vlm")
    settings["max_new_tokens"] = json.loads((run / "final" / "vlmsam_config.json").read_text())["max_new_tokens"]
    (bundle / "vlmsam_config.json").write_text(json.dumps(settings, indent=2))
    provenance["made_by"] += ", then configs/box_prompt_tiny_grpo.yaml (GRPO, SAM-R1's reward; make box-prompt-model-grpo)"
    provenance["grpo_run"] = str(run)
    (bundle / "provenance.json").write_text(json.dumps(provenance, indent=2))
    shutil.copy(run / "config.yaml", bundle / "grpo_config.yaml")
    share_parts(bundle, ("sam",))
    for split in ("original", "rich", "heldout"):  # the run's evaluations become the bundle's record
        found = Path(str(eval_dir).replace("-original", f"-{split}"))
        if (found / "metrics.json").is_file():
            file_evaluation(found, bundle, split="" if split == "original" else split)
    return True
