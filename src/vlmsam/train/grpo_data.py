"""The requests GRPO learns from: the same loaders as supervised training, as ``(image, request, truth)`` rows.

Each evaluation-style request of the configured families (``data.datasets``, their lists and ``sample_rates``)
becomes one row: the conversation trl renders (the request in the style's words), the image the VLM sees (840
x 840 bilinear for the published styles), and the truth the rewards compare with: one object per connected
part of the target mask, its tight box and one point inside it, in the frame the style answers in. A request
whose target is empty is a no-target row (an empty truth). Synthetic scenes (``datasets: synth``) also give their
further requests, drawn, worded and noised by the ``data.synth_*`` settings as supervised training draws them.
"""

from __future__ import annotations

import json
import random

import numpy as np
import torch

from vlmsam.data.registry import build_family, split_list
from vlmsam.data.sample import BadSample
from vlmsam.grounding import published
from vlmsam.grounding.parse import GRID
from vlmsam.grounding.prompts import grounding_prompt
from vlmsam.io.images import load_image

MIN_PART = 16  # pixels: a smaller connected part of a target is an annotation speck, not an object


def truth_objects(mask: np.ndarray, frame: tuple[int, int], *, published_rounding: bool) -> dict:
    """``{"boxes": [[x1, y1, x2, y2], ...], "points": [[[x, y]], ...]}`` of ``mask`` (H, W) in ``frame = (h, w)``.

    Published styles: the box is the tight extent and the point the centre of the largest inscribed circle
    (the distance transform's maximum), both scaled with ``int(v * f + 0.5)``, as Seg-Zero prepares its data.
    Otherwise as the supervised grounding answers (vlmsam.data.grounding_answers): a box around the pixels and
    the pixel nearest the centre of mass, rounded."""
    import cv2

    from vlmsam.data.grounding_answers import grounding_json

    target = (mask == 1).astype(np.uint8)
    n, labels = cv2.connectedComponents(target, connectivity=8)
    parts = [labels == k for k in range(1, n) if (labels == k).sum() >= MIN_PART]
    h, w = mask.shape
    if not published_rounding:
        objects = json.loads(grounding_json(np.stack(parts).astype(np.uint8), frame)) if parts else []
        return {"boxes": [o["bbox_2d"] for o in objects], "points": [[o["point_2d"]] for o in objects]}
    fy, fx = frame[0] / h, frame[1] / w
    boxes, points = [], []
    for part in parts:
        ys, xs = np.nonzero(part)
        dist = cv2.distanceTransform(np.pad(part.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
        py, px = np.unravel_index(int(np.argmax(dist)), dist.shape)
        boxes.append([int(xs.min() * fx + 0.5), int(ys.min() * fy + 0.5), int(xs.max() * fx + 0.5), int(ys.max() * fy + 0.5)])
        points.append([[int(px * fx + 0.5), int(py * fy + 0.5)]])
    return {"boxes": boxes, "points": points}


class GrpoRequests(torch.utils.data.Dataset):
    """Rows ``{"prompt", "image", "truth", "image_key"}`` for trl (see the module docstring).

    Args:
        data: the config's ``data`` section; style: the grounding style (box_prompt's ``--style``);
        resized: ``(h, w) -> (h, w)`` as the VLM's processor resizes (the ``qwen2_5_vl`` frame);
        seed: the order in which the families' requests are interleaved; max_requests: 0 = all.
    """

    def __init__(self, data, style: str, resized, *, seed: int = 0, max_requests: int = 0):
        self.style, self.resized, self.seed = style, resized, seed
        families = split_list(data.datasets)
        rates = [float(r) for r in split_list(data.sample_rates)]
        lists = {"reason_seg": data.reason_seg_data, "refer_seg": data.refer_seg_data, "synth": None}
        pools = []
        for family, rate in zip(families, rates):
            if family not in lists:
                raise BadSample(family, "GRPO learns from requests with targets: use reason_seg, refer_seg or synth")
            # synthetic scenes' further requests as supervised training draws them; only the requests are asked
            # here, so the answer settings (captions, format) are the plain ones
            options = {**data.synth_options(), "captions": False, "answer_format": "seg"} if family == "synth" else {}
            for ds in build_family(family, data.dataset_dir, lists[family], **options):
                pools.append((rate, [(ds, i) for i in range(len(ds))]))
        rng = random.Random(seed)
        items = []
        total = sum(len(p) for _, p in pools)
        for rate, pool in pools:  # each family's share by its sample rate, its own order shuffled
            order = pool[:]
            rng.shuffle(order)
            share = max(1, round(total * rate / sum(r for r, _ in pools))) if pool else 0
            items += [order[k % len(order)] for k in range(share)]
        rng.shuffle(items)
        self.items = items[:max_requests] if max_requests else items
        self.bad = 0  # rows replaced by the next usable one (a missing image, a broken annotation)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict:
        for step in range(len(self.items)):
            ds, i = self.items[(k + step) % len(self.items)]
            try:  # a synthetic scene: one of its own and further requests, drawn the same for row k in every run
                sample = ds.load_requests(i, random.Random(f"{self.seed}-{k}")) if ds.source == "synth" else ds.load_eval(i)
                image = load_image(sample.image)
            except (BadSample, OSError, ValueError) as exc:
                self.bad += 1
                if step == len(self.items) - 1:
                    raise BadSample(getattr(ds, "source", "data"), f"no usable request ({exc})") from None
                continue
            return self._row(sample, image, k)
        raise IndexError(k)

    def _row(self, sample, image, k: int) -> dict:
        j = (k * 7919) % len(sample.meta["queries"])  # an image with several requests (RefCOCO): one of them, fixed per row
        query, is_sentence, mask = sample.meta["queries"][j], sample.meta["is_sentence"][j], sample.masks[j]
        if self.style in published.RECIPES:
            frame, vlm_image, exact = (published.RESIZE, published.RESIZE), published.vlm_image(image), True
        elif self.style == "qwen3_vl":  # Qwen3-VL answers on a 0-1000 grid, whatever the image's size
            frame, vlm_image, exact = (int(GRID), int(GRID)), image, False
        else:
            frame, vlm_image, exact = self.resized(image.height, image.width), image, False
        truth = truth_objects(mask, frame, published_rounding=exact)
        return {"prompt": [{"role": "user", "content": grounding_prompt(query, is_sentence, self.style)}],
                "image": vlm_image, "truth": json.dumps(truth), "image_key": str(sample.image), "query": query,
                "target": (mask == 1), "frame": [frame[1], frame[0]]}  # SAM-R1's reward: the mask, the (w, h) answer frame

    def as_hf(self):
        """A ``datasets.Dataset`` (what trl takes) whose rows are made on access, images decoded lazily."""
        from datasets import Dataset

        table = Dataset.from_dict({"row": list(range(len(self)))})

        def rows(batch):
            made = [self[k] for k in batch["row"]]
            return {key: [m[key] for m in made] for key in made[0]}

        table.set_transform(rows)
        return table
