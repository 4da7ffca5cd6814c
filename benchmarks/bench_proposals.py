"""Our automatic mask generator against Meta's ``SamAutomaticMaskGenerator`` on the same weights.

ViT-B shapes (Meta's ``vit_b`` architecture, random weights, converted for ours), one 1024 x 1024 image,
a 32 x 32 point grid, 64 points per batch, Meta's default filters (``--no-filters``: the predicted-IoU and
stability filters off, so that random weights leave masks to compare; post-processing then dominates
Meta's time). Random weights pass no 0.88 IoU filter, so with the defaults there is nothing to compare:
mask equality is tested on small models that do produce masks (``tests/test_amg.py``). Prints the mask
counts, how many are pixel-identical and how many match at IoU >= 0.99, where our time goes (encoder,
decoder, upscaling, filters, NMS + RLE), then ``amg_speedup_vs_meta=<ratio>`` (target >= 1.5).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers.meta_sam import import_segment_anything  # noqa: E402  (Meta's package, test-only reference)

from vlmsam.sam import SamBackend  # noqa: E402
from vlmsam.sam.amg import AutomaticMaskGenerator  # noqa: E402


def main() -> None:
    sa = import_segment_anything()
    torch.manual_seed(0)
    meta = sa.sam_model_registry["vit_b"](checkpoint=None).eval()
    with torch.no_grad():
        for name, p in meta.named_parameters():
            if "rel_pos" in name or name.endswith("pos_embed"):
                p.normal_(0, 0.02)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sam_vit_b.pth"
        torch.save(meta.state_dict(), path)
        ours = SamBackend.from_pretrained(path)
    rng = np.random.default_rng(0)
    image = (rng.random((1024, 1024, 3)) * 80).astype(np.uint8)
    image[200:500, 150:600] = (220, 40, 40)
    image[600:900, 500:950] = (40, 40, 220)
    settings = dict(points_per_side=32, points_per_batch=64)
    if "--no-filters" in sys.argv:
        settings.update(pred_iou_thresh=0.0, stability_score_thresh=0.0)
    with torch.inference_mode():
        t0 = time.perf_counter()
        theirs = sa.SamAutomaticMaskGenerator(meta, **settings).generate(image)
        meta_s = time.perf_counter() - t0
    amg = AutomaticMaskGenerator(ours, **settings)
    t0 = time.perf_counter()
    mine = amg.generate(image)
    ours_s = time.perf_counter() - t0
    pairs = list(zip(sorted(mine, key=lambda p: (-p.area, p.bbox)), sorted(theirs, key=lambda m: (-m["area"], m["bbox"]))))
    identical = sum(np.array_equal(a.mask(), b["segmentation"]) for a, b in pairs)
    matched = 0
    for a in mine:  # each of ours against its best Meta mask
        m = a.mask()
        best = max((np.logical_and(m, b["segmentation"]).sum() / max(np.logical_or(m, b["segmentation"]).sum(), 1)
                    for b in theirs), default=0.0)
        matched += best >= 0.99
    where = ", ".join(f"{k} {v:.1f}s" for k, v in amg.timings.items())
    print(f"Meta: {len(theirs)} masks in {meta_s:.1f}s; ours: {len(mine)} masks in {ours_s:.1f}s ({where})")
    print(f"pixel-identical: {identical}/{len(theirs)}; ours matched to Meta's at IoU >= 0.99: {matched}/{len(mine)}")
    print(f"amg_speedup_vs_meta={meta_s / ours_s:.2f}")


if __name__ == "__main__":
    main()
