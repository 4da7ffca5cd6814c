"""How well SAM's automatic proposals cover the shapes of synthetic scenes: the share of visible shapes
that some proposal matches at IoU >= 0.8 (and at 0.5), and proposals per image.

The llmseg selector can only pick what SAM proposed, so this recall bounds the proposal_select
design's gIoU. ``python -m tools.proposal_recall --sam DIR --data DIR [--n 100]`` prints it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image


def shape_recall(sam_dir: str | Path, data_dir: str | Path, *, split: str = "test", n: int = 100, amg=None,
                 min_pixels: int = 12, progress: bool = True) -> dict:
    """Recall of the visible shapes (at least ``min_pixels`` pixels) of the first ``n`` scenes of ``split``."""
    import torch
    from tqdm import tqdm

    from vlmsam.data.reason_seg import read_annotation
    from vlmsam.data.synth import scene_files, visible_masks
    from vlmsam.metrics.iou import mask_iou
    from vlmsam.sam import SamBackend
    from vlmsam.sam.amg import AmgConfig, AutomaticMaskGenerator

    amg = amg or AmgConfig()
    generator = AutomaticMaskGenerator(SamBackend.from_pretrained(str(sam_dir)), amg)
    best, counts = [], []
    for path in tqdm(scene_files(data_dir, split)[:n], desc="proposal recall", disable=not progress):
        image = Image.open(path.with_suffix(".jpg")).convert("RGB")
        shapes = [m for m in visible_masks(read_annotation(path)["scene"], image.height, image.width) if m.sum() >= min_pixels]
        proposals = generator.generate(image)
        counts.append(len(proposals))
        masks = torch.from_numpy(np.stack([p.mask() for p in proposals])) if proposals else None
        best += [float(mask_iou(masks, torch.from_numpy(shape)).max()) if masks is not None else 0.0 for shape in shapes]
    best = np.array(best)
    return {"images": len(counts), "shapes": len(best), "recall@0.8": float((best >= 0.8).mean()),
            "recall@0.5": float((best >= 0.5).mean()), "mean_best_iou": float(best.mean()),
            "proposals_per_image": float(np.mean(counts)), "amg": asdict(amg)}


def main(argv: list[str] | None = None) -> int:
    from vlmsam.sam.amg import AmgConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sam", required=True, help="SAM directory")
    parser.add_argument("--data", required=True, help="a `vlmsam data synth` directory")
    parser.add_argument("--split", default="test")
    parser.add_argument("--n", type=int, default=100, help="scenes")
    parser.add_argument("--amg", default="{}", help='AmgConfig fields as JSON, e.g. \'{"points_per_side": 16}\'')
    args = parser.parse_args(argv)
    print(json.dumps(shape_recall(args.sam, args.data, split=args.split, n=args.n, amg=AmgConfig(**json.loads(args.amg))), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
