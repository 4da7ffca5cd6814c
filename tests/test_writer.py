import json

import numpy as np
import pytest
from PIL import Image

from vlmsam.io.writer import atomic_write_bytes, rle_to_mask, write_result
from vlmsam.result import SegmentationResult


def two_mask_result():
    masks = np.zeros((2, 40, 60), bool)
    masks[0, 5:20, 10:30] = True
    masks[1, 25:35, 40:55] = True
    return SegmentationResult(masks=masks, scores=[0.9, 0.4], text="Sure, [SEG] and [SEG].", timings={"total": 1.5})


def test_result_type_derives_boxes_and_checks_shapes():
    r = two_mask_result()
    assert r.masks.dtype == bool and r.num_masks == 2 and r.image_size == (40, 60)
    assert r.boxes.tolist() == [[10, 5, 30, 20], [40, 25, 55, 35]]  # XYXY, pixel edges
    assert r.labels == ["", ""]
    empty = SegmentationResult.empty((40, 60), text="There is no such object.")
    assert empty.num_masks == 0 and empty.boxes.shape == (0, 4) and empty.scores.shape == (0,)
    with pytest.raises(ValueError, match="scores"):
        SegmentationResult(masks=np.zeros((2, 4, 4), bool), scores=[1.0])


def erode(mask, r=2):
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out &= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def dilate(mask, r=2):
    return ~erode(~mask, r)


def test_files_written(tmp_path):
    image = Image.new("RGB", (60, 40), (0, 200, 100))  # flat colour: JPEG keeps it nearly exact
    result = two_mask_result()
    written = write_result(result, image, tmp_path / "out", "photo")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [
        ".vlmsam-written.json",  # the manifest of what vlmsam wrote here
        "photo.json", "photo_mask_0.png", "photo_mask_1.png",
        "photo_masked_img_0.jpg", "photo_masked_img_1.jpg", "photo_overlay.jpg",
    ]
    for i in range(2):
        png = np.asarray(Image.open(written["masks"][i]))
        assert set(np.unique(png)) == {0, 255}
        assert np.array_equal(png == 255, result.masks[i])
        tinted = np.asarray(Image.open(written["masked_images"][i])).astype(int)
        core = erode(result.masks[i])  # JPEG blurs colour edges: compare away from them
        inside = tinted[core].mean(axis=0)
        outside = tinted[~result.masks[i] & ~dilate(result.masks[i])].mean(axis=0)
        assert np.allclose(inside, [0.5 * 0 + 127.5, 0.5 * 200, 0.5 * 100], atol=4)  # 0.5 image + 0.5 red
        assert np.allclose(outside, [0, 200, 100], atol=4)
    overlay = np.asarray(Image.open(written["overlay"])).astype(int)
    colour0 = overlay[erode(result.masks[0])].mean(axis=0)
    colour1 = overlay[erode(result.masks[1])].mean(axis=0)
    assert np.abs(colour0 - colour1).sum() > 60  # each mask in its own colour

    record = json.loads(written["json"].read_text())
    assert record["answer"] == "Sure, [SEG] and [SEG]." and record["num_masks"] == 2
    assert record["scores"] == pytest.approx([0.9, 0.4])
    assert record["boxes_xyxy"] == [[10, 5, 30, 20], [40, 25, 55, 35]]
    for rle, mask in zip(record["masks"], result.masks):
        assert np.array_equal(rle_to_mask(rle), mask)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_empty_result_still_writes_overlay_and_json(tmp_path):
    image = Image.new("RGB", (60, 40))
    written = write_result(SegmentationResult.empty((40, 60), text="no"), image, tmp_path, "x")
    assert written["masks"] == [] and written["overlay"].exists()
    assert json.loads(written["json"].read_text())["masks"] == []


def test_mask_size_must_match_image(tmp_path):
    with pytest.raises(ValueError, match="masks are"):
        write_result(two_mask_result(), Image.new("RGB", (10, 10)), tmp_path, "x")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_bytes(target, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # fails while writing the temporary file
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_an_images_outputs_stay_one_consistent_set(tmp_path):
    image = Image.new("RGB", (60, 40))
    write_result(two_mask_result(), image, tmp_path, "scene")
    one = SegmentationResult(masks=two_mask_result().masks[:1])
    write_result(one, image, tmp_path, "scene")
    assert sorted(p.name for p in tmp_path.glob("scene_mask_*")) == ["scene_mask_0.png"]
    assert sorted(p.name for p in tmp_path.glob("scene_masked_img_*")) == ["scene_masked_img_0.jpg"]
    assert json.loads((tmp_path / "scene.json").read_text())["num_masks"] == 1


def test_outputs_get_the_users_umask_mode(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        written = write_result(two_mask_result(), Image.new("RGB", (60, 40)), tmp_path, "scene")
    finally:
        os.umask(old)
    for path in [*written["masks"], written["overlay"], written["json"]]:
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_out_naming_a_file_is_a_user_error(tmp_path):
    from vlmsam.errors import VlmsamError

    (tmp_path / "taken").write_text("x")
    with pytest.raises(VlmsamError, match="is a file"):
        write_result(two_mask_result(), Image.new("RGB", (60, 40)), tmp_path / "taken", "scene")
