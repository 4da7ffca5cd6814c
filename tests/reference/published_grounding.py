"""The published Seg-Zero and VisionReasoner inference, for the peer test (tests/test_published_grounding.py).

The functions marked VERBATIM are copied unchanged from dvlab-research/Seg-Zero (Apache-2.0):
``evaluation_scripts/evaluation.py`` (Seg-Zero, one object) and ``evaluation_scripts/evaluation_visionreasoner.py``
(VisionReasoner, several objects), commit 42a33455283ba041a3099cf154a708116f300cec. ``run_published`` is their
``main()`` loop for one sample, with the lines kept as published and only the batch/dataset plumbing removed.

Two stand-ins, because their packages cannot run here (torchvision, a CUDA build):
* for ``AutoProcessor`` (Qwen2_5_VLProcessor), vlmsam's torchvision-free ``TrlVlmProcessor``, which does what
  it does with their call: the Qwen2-VL chat template rendered by jinja, each ``<|image_pad|>`` expanded to the
  image's token count, the tokenizer (the test compares its ids and pixels with VlmProcessor's, so it is
  checked too). ``qwen_vl_utils.process_vision_info`` leaves their 840 x 840 RGB image as it is (840 is a multiple of 28
  inside its pixel limits, and PIL's resize to the same size is a copy), so the image goes in directly.
* ``Sam2ImagePredictor``: ``sam2.sam2_image_predictor.SAM2ImagePredictor`` over transformers' Sam2Model, written
  from sam2's source: coordinates normalised by the original size onto 1024, the box as two corner points
  (labels 2, 3) ahead of the points and a padding point after them, masks resized bilinearly to the
  original size and thresholded at 0.0, ``multimask_output=True`` by default.
"""

from __future__ import annotations

import json
import re

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage

resize_size = 840

# ---- VERBATIM evaluation_scripts/evaluation.py (Seg-Zero) ---------------------------------------------------------
SEG_ZERO_QUESTION_TEMPLATE = \
    "Please find '{Question}' with bbox and points." \
    "Compare the difference between objects and find the most closely matched one." \
    "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags." \
    "Output the one bbox and points of two largest inscribed circles inside the interested object in JSON format." \
    "i.e., <think> thinking process here </think>" \
    "<answer>{Answer}</answer>"


def seg_zero_extract_bbox_points_think(output_text, x_factor, y_factor):
    json_pattern = r'{[^}]+}'  # 匹配最简单的JSON对象
    json_match = re.search(json_pattern, output_text)
    # pdb.set_trace()
    if json_match:
        data = json.loads(json_match.group(0))
        # 查找bbox键
        bbox_key = next((key for key in data.keys() if 'bbox' in key.lower()), None)
        # pdb.set_trace()
        if bbox_key and len(data[bbox_key]) == 4:
            content_bbox = data[bbox_key]
            content_bbox = [round(int(content_bbox[0])*x_factor), round(int(content_bbox[1])*y_factor), round(int(content_bbox[2])*x_factor), round(int(content_bbox[3])*y_factor)]
        # 查找points键
        points_keys = [key for key in data.keys() if 'points' in key.lower()][:2]  # 获取前两个points键
        if len(points_keys) == 2:
            point1 = data[points_keys[0]]
            point2 = data[points_keys[1]]
            point1 = [round(int(point1[0])*x_factor), round(int(point1[1])*y_factor)]
            point2 = [round(int(point2[0])*x_factor), round(int(point2[1])*y_factor)]
            points = [point1, point2]

    think_pattern = r'<think>([^<]+)</think>'
    think_match = re.search(think_pattern, output_text)
    if think_match:
        think_text = think_match.group(1)

    return content_bbox, points, think_text


# ---- VERBATIM evaluation_scripts/evaluation_visionreasoner.py (VisionReasoner) ------------------------------------
VISION_REASONER_QUESTION_TEMPLATE = \
    "Please find \"{Question}\" with bboxs and points." \
    "Compare the difference between object(s) and find the most closely matched object(s)." \
    "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags." \
    "Output the bbox(es) and point(s) inside the interested object(s) in JSON format." \
    "i.e., <think> thinking process here </think>" \
    "<answer>{Answer}</answer>"


def vision_reasoner_extract_bbox_points_think(output_text, x_factor, y_factor):
    json_match = re.search(r'<answer>\s*(.*?)\s*</answer>', output_text, re.DOTALL)
    if json_match:
        data = json.loads(json_match.group(1))
        pred_bboxes = [[
            int(item['bbox_2d'][0] * x_factor + 0.5),
            int(item['bbox_2d'][1] * y_factor + 0.5),
            int(item['bbox_2d'][2] * x_factor + 0.5),
            int(item['bbox_2d'][3] * y_factor + 0.5)
        ] for item in data]
        pred_points = [[
            int(item['point_2d'][0] * x_factor + 0.5),
            int(item['point_2d'][1] * y_factor + 0.5)
        ] for item in data]

    think_pattern = r'<think>([^<]+)</think>'
    think_text = ""
    think_match = re.search(think_pattern, output_text)
    if think_match:
        think_text = think_match.group(1)

    return pred_bboxes, pred_points, think_text


def messages_for(version: str, image, text: str):
    """Their message for one sample (the ``for item in dataset`` loop of each script)."""
    if version == "seg_zero":
        return [{"role": "user", "content": [
            {"type": "image", "image": image.resize((resize_size, resize_size), PILImage.BILINEAR)},
            {"type": "text", "text": SEG_ZERO_QUESTION_TEMPLATE.format(
                Question=text.lower().strip("."),
                Answer="{'bbox': [10,100,200,210], 'points_1': [30,110], 'points_2': [35,180]}")}]}]
    image = image.convert("RGB")
    return [{"role": "user", "content": [
        {"type": "image", "image": image.resize((resize_size, resize_size), PILImage.BILINEAR)},
        {"type": "text", "text": VISION_REASONER_QUESTION_TEMPLATE.format(
            Question=text.lower().strip(".\"?!"),
            Answer="[{\"bbox_2d\": [10,100,200,210], \"point_2d\": [30,110]}, {\"bbox_2d\": [225,296,706,786], \"point_2d\": [302,410]}]")}]}]


def run_published(version, image, text, processor, reasoning_model, segmentation_model, *, max_new_tokens=1024,
                  logits_processor=None):
    """``main()`` of their evaluation script for one sample: ``(inputs, output_text, bboxes, points, mask_all)``;
    a parse failure (their penalty path) gives ``bboxes = points = None`` and an empty mask."""
    batch_messages = [messages_for(version, image, text)]
    text_in = [processor.apply_chat_template(msg, tokenize=False, add_generation_prompt=True) for msg in batch_messages]
    image_inputs = [batch_messages[0][0]["content"][0]["image"]]  # process_vision_info: unchanged (module docstring)
    inputs = processor(text=text_in, images=image_inputs, padding=True, return_tensors="pt")
    extra = {"logits_processor": logits_processor} if logits_processor is not None else {}
    generated_ids = reasoning_model.generate(**inputs, use_cache=True, max_new_tokens=max_new_tokens, do_sample=False, **extra)
    generated_ids_trimmed = [out_ids[len(in_ids):] for in_ids, out_ids in zip(inputs.input_ids, generated_ids)]
    output_text = processor.batch_decode(generated_ids_trimmed, skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]
    width, height = image.size
    mask_all = np.zeros((height, width), dtype=bool)
    extract = seg_zero_extract_bbox_points_think if version == "seg_zero" else vision_reasoner_extract_bbox_points_think
    try:
        bboxes, points, think = extract(output_text, width / resize_size, height / resize_size)
    except Exception:
        return inputs, output_text, None, None, mask_all
    segmentation_model.set_image(image)
    if version == "seg_zero":  # evaluation.py: one box, its two points
        masks, scores, _ = segmentation_model.predict(point_coords=points, point_labels=[1, 1], box=bboxes)
        sorted_ind = np.argsort(scores)[::-1]
        masks = masks[sorted_ind]
        mask_all = masks[0].astype(bool)
        return inputs, output_text, [bboxes], [points], mask_all
    for bbox, point in zip(bboxes, points):
        masks, scores, _ = segmentation_model.predict(point_coords=[point], point_labels=[1], box=bbox)
        sorted_ind = np.argsort(scores)[::-1]
        masks = masks[sorted_ind]
        mask = masks[0].astype(bool)
        mask_all = np.logical_or(mask_all, mask)
    return inputs, output_text, bboxes, [[p] for p in points], mask_all


class Sam2ImagePredictor:
    """SAM2ImagePredictor's ``set_image`` / ``predict`` over a transformers Sam2Model (see the module docstring)."""

    def __init__(self, model, pixels_fn, mask_threshold=0.0):
        self.model, self.pixels_fn, self.mask_threshold = model, pixels_fn, mask_threshold

    @torch.no_grad()
    def set_image(self, image):
        self._orig_hw = (image.height, image.width)
        self._features = self.model.get_image_embeddings(self.pixels_fn(image))

    @torch.no_grad()
    def predict(self, point_coords=None, point_labels=None, box=None, multimask_output=True):
        h, w = self._orig_hw
        scale = torch.tensor([1024 / w, 1024 / h])  # transform_coords(normalize=True): / (w, h) * resolution
        coords = torch.as_tensor(np.array(point_coords), dtype=torch.float32) * scale
        labels = torch.as_tensor(np.array(point_labels), dtype=torch.int32)
        corners = torch.as_tensor(np.array(box), dtype=torch.float32).reshape(2, 2) * scale
        coords = torch.cat([corners, coords])  # _predict: the box's corners first (labels 2, 3), then the points
        labels = torch.cat([torch.tensor([2, 3], dtype=torch.int32), labels])
        out = self.model(image_embeddings=self._features, input_points=coords[None, None], input_labels=labels[None, None],
                         multimask_output=multimask_output)  # no boxes: the prompt encoder pads one point, as sam2 does
        low_res = out.pred_masks[0]
        masks = F.interpolate(low_res, size=(h, w), mode="bilinear", align_corners=False)[0] > self.mask_threshold
        return masks.float().numpy(), out.iou_scores[0, 0].float().numpy(), low_res[0].numpy()
