"""SAM's automatic mask generator ("everything" mode), as Meta's ``SamAutomaticMaskGenerator`` defines it.

A thin loop over the predictor: ``generate`` -> per crop ``_process_crop`` (encode the crop once) ->
per batch of grid points ``_process_batch`` (one batched decoder call, three candidate masks per
point) -> filters (predicted IoU, stability score, boxes touching a crop edge) -> box NMS per crop
and across crops -> optional removal of small regions. Same defaults and the same order of
operations as Meta's, so the masks are the same on the same weights (``tests/test_amg.py``); NMS is
torchvision's where it is installed and an equal greedy NMS in torch where it is not.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from itertools import product

import numpy as np
import torch
from pycocotools import mask as mask_utils

from vlmsam.io.images import ImageSource, load_image
from vlmsam.sam.backend import MASK_THRESHOLD, SamBackend


@dataclass
class AmgConfig:
    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0


@dataclass
class Proposal:
    """One mask of the image: ``segmentation`` is COCO RLE (compressed) at the original size; ``bbox``
    is XYWH in pixels (Meta's convention); ``point_coords`` the grid point that produced it."""

    segmentation: dict
    area: int
    bbox: list[float]
    predicted_iou: float
    stability_score: float
    point_coords: list[list[float]]
    crop_box: list[int]

    def mask(self) -> np.ndarray:
        return mask_utils.decode(self.segmentation).astype(bool)

    def to_dict(self) -> dict:
        return asdict(self)


# ---- the pieces, as Meta's amg.py defines them --------------------------------------------------------


def build_point_grid(n_per_side: int) -> np.ndarray:
    """``(n*n, 2)`` points evenly spaced in [0, 1]^2, half a cell from the edges."""
    offset = 1 / (2 * n_per_side)
    one_side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(one_side[None, :], (n_per_side, 1))
    ys = np.tile(one_side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def generate_crop_boxes(im_size: tuple[int, int], n_layers: int, overlap_ratio: float) -> tuple[list[list[int]], list[int]]:
    """The whole image, then ``2^k x 2^k`` overlapping crops for each layer ``k`` (XYXY)."""
    im_h, im_w = im_size
    boxes, layers = [[0, 0, im_w, im_h]], [0]
    for i_layer in range(n_layers):
        n = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * min(im_h, im_w) * (2 / n))
        crop_w = int(math.ceil((overlap * (n - 1) + im_w) / n))
        crop_h = int(math.ceil((overlap * (n - 1) + im_h) / n))
        x0s = [int((crop_w - overlap) * i) for i in range(n)]
        y0s = [int((crop_h - overlap) * i) for i in range(n)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(i_layer + 1)
    return boxes, layers


def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """IoU of the mask thresholded at ``threshold + offset`` with the one at ``threshold - offset``."""
    inter = (logits > (threshold + offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    union = (logits > (threshold - offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    return inter / union


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)`` bool -> ``(N, 4)`` XYXY with inclusive max coordinates (empty -> zeros)."""
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, device=masks.device)
    h, w = masks.shape[-2:]
    rows = masks.any(dim=-1)
    cols = masks.any(dim=-2)
    ys = rows * torch.arange(h, device=masks.device)[None]
    xs = cols * torch.arange(w, device=masks.device)[None]
    bottom, right = ys.max(dim=-1).values, xs.max(dim=-1).values
    top = (ys + h * ~rows).min(dim=-1).values
    left = (xs + w * ~cols).min(dim=-1).values
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    empty = (right < left) | (bottom < top)
    return boxes * (~empty)[..., None]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices kept by greedy NMS, best score first (torchvision's ``nms`` where it is installed)."""
    try:
        from torchvision.ops import nms as tv_nms

        return tv_nms(boxes.float(), scores.float(), iou_threshold)
    except Exception:  # no torchvision, or one whose compiled ops do not load
        pass
    order = torch.argsort(scores, descending=True, stable=True)  # ties (one score per crop) keep their order
    boxes = boxes.float()[order]
    if len(boxes) == 0:
        return order
    iou = box_iou(boxes, boxes)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def near_crop_edge(boxes: torch.Tensor, crop_box: list[int], orig_box: list[int], atol: float = 20.0) -> torch.Tensor:
    """Boxes (in crop coordinates) that touch the crop's edge where it is not the image's edge."""
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    boxes = (boxes + torch.tensor([crop_box[0], crop_box[1], crop_box[0], crop_box[1]], device=boxes.device)).float()
    at_crop = torch.isclose(boxes, crop[None], atol=atol, rtol=0)
    at_image = torch.isclose(boxes, orig[None], atol=atol, rtol=0)
    return torch.any(at_crop & ~at_image, dim=1)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``area_thresh``."""
    import cv2

    correct_holes = mode == "holes"
    working = (correct_holes ^ mask).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, 8)
    sizes = stats[:, -1][1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    fill = [0] + small
    if not correct_holes:
        fill = [i for i in range(n_labels) if i not in fill]
        if not fill:  # keep the largest region if every one is small
            fill = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True


# ---- the generator --------------------------------------------------------------------------------------


class AutomaticMaskGenerator:
    """Every object SAM finds in an image, from a grid of point prompts (see the module docstring).

    >>> amg = AutomaticMaskGenerator(SamBackend.from_pretrained("weights/sam_vit_h_4b8939.pth"))
    >>> proposals = amg.generate("photo.jpg")       # list[Proposal], masks as COCO RLE
    """

    def __init__(self, sam: SamBackend, config: AmgConfig | None = None, **overrides):
        self.sam = sam
        self.config = config or AmgConfig(**overrides)
        c = self.config
        self.point_grids = [build_point_grid(int(c.points_per_side / (c.crop_n_points_downscale_factor ** i)))
                            for i in range(c.crop_n_layers + 1)]
        self.timings = {"encode": 0.0, "decode": 0.0, "upscale": 0.0, "filter": 0.0, "nms_rle": 0.0}  # seconds, summed

    @torch.inference_mode()
    def generate(self, image: ImageSource) -> list[Proposal]:
        c = self.config
        array = np.asarray(load_image(image))
        orig_h, orig_w = array.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes((orig_h, orig_w), c.crop_n_layers, c.crop_overlap_ratio)
        parts = [self._process_crop(array, box, layer, (orig_h, orig_w)) for box, layer in zip(crop_boxes, layer_idxs)]
        data = {k: [x for p in parts for x in p[k]] if isinstance(parts[0][k], list) else torch.cat([p[k] for p in parts])
                for k in parts[0]}
        if len(crop_boxes) > 1 and len(data["rles"]):
            crops = data["crop_boxes"].float()
            scores = 1 / ((crops[:, 2] - crops[:, 0]) * (crops[:, 3] - crops[:, 1]))  # prefer masks from smaller crops
            data = _select(data, nms(data["boxes"].float(), scores, c.crop_nms_thresh))
        if c.min_mask_region_area > 0 and len(data["rles"]):
            data = self._remove_small_regions(data, c.min_mask_region_area, max(c.box_nms_thresh, c.crop_nms_thresh))
        return [Proposal(segmentation=rle, area=int(mask_utils.area(rle)),
                         bbox=[float(v) for v in _xywh(box)], predicted_iou=float(iou), stability_score=float(stab),
                         point_coords=[[float(v) for v in point]], crop_box=[int(v) for v in crop])
                for rle, box, iou, stab, point, crop in zip(data["rles"], data["boxes"], data["iou_preds"],
                                                            data["stability_score"], data["points"], data["crop_boxes"])]

    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer: int, orig_size: tuple[int, int]) -> dict:
        x0, y0, x1, y1 = crop_box
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        t0 = time.perf_counter()
        embedding = self.sam.encode(crop)  # the heavy encoder: once per crop
        self.timings["encode"] += time.perf_counter() - t0
        h, w = crop.shape[:2]
        points = self.point_grids[layer] * np.array([[w, h]])
        batches = [self._process_batch(points[i:i + self.config.points_per_batch], crop_box, orig_size, embedding)
                   for i in range(0, len(points), self.config.points_per_batch)]
        t0 = time.perf_counter()
        data = {k: torch.cat([b[k] for b in batches]) for k in ("iou_preds", "points", "stability_score", "boxes", "masks")}
        keep = nms(data["boxes"].float(), data["iou_preds"], self.config.box_nms_thresh)
        data = {k: v[keep] for k, v in data.items()}
        offset = torch.tensor([x0, y0, x0, y0])
        data["boxes"] = data["boxes"] + offset
        data["points"] = data["points"] + torch.tensor([x0, y0])
        data["crop_boxes"] = torch.tensor([crop_box] * len(keep), dtype=torch.int64).reshape(-1, 4)
        data["rles"] = [_rle(_uncrop(m, crop_box, orig_size)) for m in data.pop("masks")]
        self.timings["nms_rle"] += time.perf_counter() - t0
        return data

    def _process_batch(self, points: np.ndarray, crop_box: list[int], orig_size: tuple[int, int], embedding) -> dict:
        c = self.config
        sam = self.sam
        t0 = time.perf_counter()
        if hasattr(sam, "transform_coords"):
            coords = torch.as_tensor(points, dtype=torch.float32)
            coords = sam.transform_coords(coords, embedding)[:, None, None].to(sam.device, sam.dtype)
            labels = torch.ones(len(points), 1, 1, dtype=torch.long, device=sam.device)
            sparse = sam.model.prompt_encoder._embed_points(coords, labels, pad=True)[:, 0]  # a padding point, as Meta's
            if hasattr(sam, "decode_prompts"):  # SAM: image-side work shared across the batch (sam/fast_decoder.py)
                low_res, iou = sam.decode_prompts(embedding, sparse, multimask_output=True)
            else:
                low_res, iou = sam.decode(embedding, sparse_embeddings=sparse, multimask_output=True)
        else:  # SAM 2 / SAM 3's tracker: one point per prompt through the backend's own predict
            pred = sam.predict(embedding, points=np.asarray(points, np.float32)[:, None, :], multimask_output=True)
            low_res, iou = pred.low_res_logits, pred.iou_scores
        t1 = time.perf_counter()
        logits = sam.upscale_logits(low_res, embedding)  # (B, 3, h, w) at the crop's size
        t2 = time.perf_counter()
        self.timings["decode"] += t1 - t0
        self.timings["upscale"] += t2 - t1
        data = {"masks": logits.flatten(0, 1), "iou_preds": iou.flatten(0, 1).float(),
                "points": torch.as_tensor(points, dtype=torch.float32).repeat_interleave(logits.shape[1], dim=0)}
        if c.pred_iou_thresh > 0:
            data = _select(data, data["iou_preds"] > c.pred_iou_thresh)
        data["stability_score"] = stability_score(data["masks"], MASK_THRESHOLD, c.stability_score_offset)
        if c.stability_score_thresh > 0:
            data = _select(data, data["stability_score"] >= c.stability_score_thresh)
        data["masks"] = data["masks"] > MASK_THRESHOLD
        data["boxes"] = masks_to_boxes(data["masks"])
        keep = ~near_crop_edge(data["boxes"], crop_box, [0, 0, orig_size[1], orig_size[0]])
        self.timings["filter"] += time.perf_counter() - t2
        return _select(data, keep) if not bool(keep.all()) else data

    def _remove_small_regions(self, data: dict, min_area: int, nms_thresh: float) -> dict:
        masks, scores = [], []
        for rle in data["rles"]:
            mask = mask_utils.decode(rle).astype(bool)
            mask, changed = remove_small_regions(mask, min_area, "holes")
            unchanged = not changed
            mask, changed = remove_small_regions(mask, min_area, "islands")
            unchanged = unchanged and not changed
            masks.append(torch.as_tensor(mask))
            scores.append(float(unchanged))  # prefer masks that needed no post-processing
        stacked = torch.stack(masks)
        boxes = masks_to_boxes(stacked)
        keep = nms(boxes.float(), torch.as_tensor(scores), nms_thresh)
        data = _select(data, keep)
        for k, i in enumerate(keep.tolist()):
            if scores[i] == 0.0:  # recompute what changed
                data["rles"][k] = _rle(stacked[i])
                data["boxes"][k] = boxes[i]
        return data


def _select(data: dict, keep: torch.Tensor) -> dict:
    out = {}
    for k, v in data.items():
        if isinstance(v, list):
            idx = keep.nonzero().flatten().tolist() if keep.dtype == torch.bool else keep.tolist()
            out[k] = [v[i] for i in idx]
        else:
            out[k] = v[keep.to(v.device)]
    return out


def _uncrop(mask: torch.Tensor, crop_box: list[int], orig_size: tuple[int, int]) -> torch.Tensor:
    x0, y0, x1, y1 = crop_box
    h, w = orig_size
    if (x0, y0, x1, y1) == (0, 0, w, h):
        return mask
    out = torch.zeros((h, w), dtype=torch.bool)
    out[y0:y1, x0:x1] = mask
    return out


def _rle(mask: torch.Tensor) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.cpu().numpy().astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _xywh(box: torch.Tensor) -> list[float]:
    x1, y1, x2, y2 = box.tolist()
    return [x1, y1, x2 - x1, y2 - y1]
