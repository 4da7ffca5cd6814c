"""The grounding frame: ``VlmProcessor.resized_size`` must be the size the image processor really resizes to.

Training (grounding answers, GRPO's truths and rewards) writes coordinates in ``resized_size``'s frame and the
box_prompt segmenter reads answers in the frame of the image grid the VLM saw; the two must agree for every
image size, with the bundle's processor (min = max = 16,384 pixels, so nearly every image is rescaled) and with
Qwen2.5-VL's own bounds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from vlmsam.vlm.processor import VlmProcessor

BUNDLED_VLM = Path(__file__).resolve().parents[1] / "src/vlmsam/weights/vlmsam-tiny-grounding/vlm"
SIZES = [(128, 128), (160, 120), (120, 160), (144, 112), (112, 144), (176, 132), (640, 480), (33, 517), (1000, 90),
         (1280, 960), (2000, 1500)]  # the last two: over Qwen2-VL's default 1,003,520 pixels, under Qwen2.5-VL's bound


def grid_frame(processor: VlmProcessor, width: int, height: int) -> tuple[int, int]:
    """``(h, w)`` of the image as the VLM sees it: its patch grid times the patch size."""
    _, grid, _ = processor.image_inputs(Image.new("RGB", (width, height)))
    patch = processor.image_processor.patch_size
    return int(grid[0][1]) * patch, int(grid[0][2]) * patch


@pytest.mark.parametrize("bounds", [None, (56 * 56, 12_845_056)], ids=["bundle", "qwen2_5_vl_bounds"])
def test_resized_size_is_the_frame_the_vlm_sees(bounds):
    processor = VlmProcessor.from_pretrained(BUNDLED_VLM)
    if bounds:
        processor.image_processor.size.shortest_edge, processor.image_processor.size.longest_edge = bounds
    rescaled = 0
    for width, height in SIZES:
        frame = grid_frame(processor, width, height)
        assert processor.resized_size(height, width) == frame, (width, height)
        rescaled += abs(frame[0] * frame[1] - height * width) > 16 * (height + width + 16)  # more than rounding
    assert rescaled if bounds is None else not rescaled  # the bundle rescales; Qwen2.5-VL's bounds hold them all
