"""Meta's one-to-many (DAC) matcher, for the peer test tests/test_sam3_dac.py only, copied from
facebookresearch/sam3 at 99d02f28c8d34610ab35559b72642b01f10fdb1e (SAM License, Copyright (c) Meta Platforms, Inc.):
``sam3/train/matcher.py`` ``BinaryOneToManyMatcher.forward`` cut to the path our training uses (no validity masks,
no empty-target early return) and ``sam3/model/box_ops.py`` ``box_cxcywh_to_xyxy`` / ``box_area`` / ``box_iou``;
the rest is as published."""

import torch


def box_cxcywh_to_xyxy(x):
    x_c, y_c, w, h = x.unbind(-1)
    b = [(x_c - 0.5 * w), (y_c - 0.5 * h), (x_c + 0.5 * w), (y_c + 0.5 * h)]
    return torch.stack(b, dim=-1)


def box_area(boxes):
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1, boxes2):
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.max(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = torch.min(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)  # (..., N, M, 2)
    inter = wh[..., 0] * wh[..., 1]  # (..., N, M)
    union = area1[..., None] + area2[..., None, :] - inter
    iou = inter / union
    return iou, union


@torch.no_grad()
def binary_one_to_many_match(outputs, batched_targets, alpha=0.3, threshold=0.4, topk=4):
    out_prob = torch.sigmoid(outputs["pred_logits"]).squeeze(-1)  # (B, Q)
    out_bbox = outputs["pred_boxes"]  # (B, Q, 4))
    num_boxes = batched_targets["num_boxes"]
    tgt_bbox = batched_targets["boxes_padded"]
    bs, num_queries = outputs["pred_logits"].shape[:2]
    num_targets = tgt_bbox.shape[1]
    iou, _ = box_iou(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))
    C = alpha * out_prob.unsqueeze(-1) + (1 - alpha) * iou
    matches = C > torch.quantile(C, 1 - topk / num_queries, dim=1, keepdim=True)
    matches = matches & (C > threshold)
    matches = matches & (torch.arange(0, num_targets, device=num_boxes.device)[None] < num_boxes[:, None]).unsqueeze(1)
    batch_idx, src_idx, tgt_idx = torch.nonzero(matches, as_tuple=True)
    return batch_idx, src_idx, tgt_idx
