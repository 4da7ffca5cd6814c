"""proposal_select with the marks selector on tiny real models: the VLM's numbers pick SAM's proposals."""

from __future__ import annotations

import numpy as np

from tests.helpers.forcing import force_text
from tests.helpers.tiny_segmenters import proposal_select as build
from vlmsam.proposal_select.segmenter import draw_marks, parse_marks



def test_parse_marks():
    assert parse_marks("2, 5 and 2", 6) == ([1, 4], "")
    assert parse_marks("Regions 9 and 0", 6)[0] == [] and "between 1 and 6" in parse_marks("9", 6)[1]
    assert parse_marks("None of them.", 6) == ([], "the VLM answered none")


def test_marks_image_shows_the_numbers():
    img = np.zeros((40, 60, 3), np.uint8)
    masks = np.zeros((2, 40, 60), bool)
    masks[0, 5:20, 5:25] = True
    masks[1, 20:35, 30:55] = True
    marks = np.asarray(draw_marks(__import__("PIL.Image").Image.fromarray(img), masks))
    from vlmsam.proposal_select.segmenter import PALETTE

    # away from the numbers: a black image tinted 40 % towards each mask's colour, untouched elsewhere
    for k, (y, x) in enumerate([(5, 5), (34, 54)]):
        assert np.abs(marks[y, x].astype(int) - np.round(0.4 * np.array(PALETTE[k]))).max() <= 1, (k, marks[y, x])
    assert (marks[~masks.any(0)] == 0).all()
    assert (marks[masks[0]].min(-1) > 200).any() and (marks[masks[1]].min(-1) > 200).any()  # each number written, white


def test_the_vlms_numbers_choose_the_proposals(tmp_path):
    seg = build(tmp_path)
    img = np.full((60, 80, 3), 90, np.uint8)
    img[10:30, 20:50] = (230, 30, 30)
    encoded = seg.encode(img)
    masks = encoded.extras["masks"]
    assert len(masks) >= 2
    p = seg.vlm.processor
    force = force_text(p, "2, 1")
    result = seg.segment(encoded, "the red box", logits_processor=force)
    assert result.num_masks == 2 and np.array_equal(result.masks, masks[[1, 0]])
    assert result.labels == ["region 2", "region 1"] and "marks" in result.extra_images
    force = force_text(p, "none")
    assert seg.segment(encoded, "a unicorn", logits_processor=force).num_masks == 0
    from vlmsam.io import write_result

    written = write_result(result, __import__("PIL.Image").Image.fromarray(img), tmp_path / "out", "scene")
    assert written["marks"].name == "scene_marks.png" and written["marks"].is_file()
