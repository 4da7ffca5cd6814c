"""`vlmsam data synth`: the ReasonSeg layout, every request kind, answers that match the masks."""

from __future__ import annotations

import collections
import json
import random
import re

import numpy as np

from tests.conftest import run_cli
from vlmsam.data.reason_seg import ReasonSegDataset
from vlmsam.data.synth import COLORS, KINDS, SHAPES, SynthDataset, make_scene, write_synth


def test_cli_writes_the_reason_seg_layout_deterministically(tmp_path):
    proc = run_cli("data", "synth", "--out", tmp_path / "a", "--n", "60", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 60 scenes" in proc.stdout and "train: 48, val: 6, test: 6" in proc.stdout
    run_cli("data", "synth", "--out", tmp_path / "b", "--n", "60", "--seed", "3")
    a = sorted((tmp_path / "a").rglob("*.json"))
    b = sorted((tmp_path / "b").rglob("*.json"))
    assert [p.read_text() for p in a] == [p.read_text() for p in b]
    assert run_cli("data", "check", "--dataset-dir", tmp_path / "a").returncode == 0
    assert run_cli("data", "synth", "--out", tmp_path / "c", "--n", "0").returncode == 2


def test_every_kind_with_consistent_answers_and_masks(tmp_path):
    write_synth(tmp_path, 400, seed=5, progress=False)
    ds = SynthDataset(tmp_path, "train")
    plain = ReasonSegDataset(tmp_path, "train")
    kinds = collections.Counter()
    for i in range(len(ds)):
        anno = json.loads(ds.items[i].read_text())
        kinds[anno["kind"]] += 1
        s = ds.load(i, random.Random(i))
        (question, answer), = s.conversations[0]
        assert anno["text"][0] in question
        assert s.seg_count == len(s.masks) == len(anno["shapes"])
        if anno["kind"] == "none":
            assert len(s.masks) == 0 and answer.startswith("There is no ")
        elif anno["kind"] == "multiple":
            assert len(s.masks) >= 2
        else:
            assert len(s.masks) == 1
        union = plain.load(i, random.Random(0)).masks[0] if plain.load(i, random.Random(0)).masks.size else None
        if len(s.masks):
            np.testing.assert_array_equal(np.any(s.masks, axis=0).astype(np.uint8), union)
            assert all(m.sum() > 20 for m in s.masks)  # every target is visible
    assert set(kinds) == set(KINDS) and min(kinds.values()) >= 15
    sentences = sum(json.loads(p.read_text())["is_sentence"] for p in ds.items)
    assert 0.35 < sentences / len(ds) < 0.65


def test_relation_and_superlative_answers_are_right():
    rng = random.Random(11)
    checked = collections.Counter()
    while min(checked.get(k, 0) for k in ("relation", "superlative")) < 20:
        kind = rng.choice(["relation", "superlative"])
        scene = make_scene(rng, kind)
        if scene is None:
            continue
        j = scene["json"]
        text, shapes = j["text"][0], j["scene"]
        target = [np.mean(s["points"], axis=0) for s in j["shapes"]][0]
        chosen = min(shapes, key=lambda s: np.hypot(s["center"][0] - target[0], s["center"][1] - target[1]))
        if "leftmost" in text:
            assert chosen["center"][0] == min(s["center"][0] for s in shapes)
        elif "topmost" in text:
            assert chosen["center"][1] == min(s["center"][1] for s in shapes)
        elif "left of" in text:
            anchor = next(s for s in shapes if f"{s['color']} {s['shape']}" in text)
            assert chosen["center"][0] < anchor["center"][0]
        checked[kind] += 1


def test_visible_masks_rebuild_what_the_scene_shows():
    from vlmsam.data.masks import fill_polygon
    from vlmsam.data.synth import visible_masks

    rng = random.Random(4)
    overlapping = 0
    for _ in range(60):
        scene = make_scene(rng)
        if scene is None:
            continue
        j = scene["json"]
        h, w = j["imageHeight"], j["imageWidth"]
        masks = visible_masks(j["scene"], h, w)
        polygons = np.stack([fill_polygon(s["points"], h, w) == 1 for s in j["scene"]])
        assert masks.shape == polygons.shape
        assert masks.sum(0).max() <= 1  # what is seen of each shape is disjoint from the others
        np.testing.assert_array_equal(masks.any(0), polygons.any(0))
        overlapping += int((masks.sum((1, 2)) < polygons.sum((1, 2))).any())
        for t in j["shapes"]:  # targets are painted last, so they are wholly visible
            drawn = fill_polygon(t["points"], h, w) == 1
            assert any(np.array_equal(drawn, m) for m in masks)
    assert overlapping > 0  # some scenes did hide part of a shape


def test_training_samples_carry_a_left_to_right_caption(tmp_path):
    from vlmsam.data.synth import CAPTION_QUESTION

    write_synth(tmp_path, 30, seed=6, progress=False)
    ds = SynthDataset(tmp_path, "train")
    for i in range(len(ds)):
        anno = json.loads(ds.items[i].read_text())
        s = ds.load(i, random.Random(i))
        assert len(s.conversations) == 2
        (question, answer), = s.conversations[1]
        assert question == CAPTION_QUESTION and "[SEG]" not in answer
        shapes = sorted(anno["scene"], key=lambda t: t["center"][0])
        assert answer.startswith(f"There are {len(shapes)} shapes: ")
        named = re.findall(rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b", answer)
        assert named == [(t["color"], t["shape"]) for t in shapes]  # every shape, left to right
    assert len(SynthDataset(tmp_path, "train", captions=False).load(0, random.Random(0)).conversations) == 1


def test_describe_first_answers_name_every_shape_then_decide(tmp_path):
    write_synth(tmp_path, 40, seed=8, progress=False)
    plain, described = SynthDataset(tmp_path, "train"), SynthDataset(tmp_path, "train", describe_first=True)
    kinds = set()
    for i in range(len(described)):
        anno = json.loads(described.items[i].read_text())
        s = described.load(i, random.Random(i))
        (question, answer), = s.conversations[0]  # one conversation: the caption is inside the answer
        assert len(s.conversations) == 1
        (plain_question, plain_answer), = plain.load(i, random.Random(i)).conversations[0]
        assert question == plain_question
        shapes = sorted(anno["scene"], key=lambda t: t["center"][0])
        head = answer[: len(answer) - len(plain_answer)]
        assert answer.endswith(" " + plain_answer) and head.startswith(f"There are {len(shapes)} shapes: ")
        assert re.findall(rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b", head) == [(t["color"], t["shape"]) for t in shapes]
        assert answer.count("[SEG]") == len(s.masks) == plain_answer.count("[SEG]")
        kinds.add(anno["kind"])
    assert "none" in kinds and len(kinds) >= 4


def test_extra_requests_ask_about_the_same_scene_with_right_targets(tmp_path):
    from vlmsam.data.masks import fill_polygon

    write_synth(tmp_path, 40, seed=9, progress=False)
    ds = SynthDataset(tmp_path, "train", extra_requests=3)
    checked = marked = 0
    for i in range(len(ds)):
        anno = json.loads(ds.items[i].read_text())
        s = ds.load(i, random.Random(i))
        assert len(s.conversations) == 2 + 3  # the request, the caption, three more
        refusals = [c for c, conv in enumerate(s.conversations) if conv[0][1].startswith("There is no ")]
        assert s.meta["no_target"] == refusals  # what grounding_weight points at the sink
        marked += len(refusals)
        answers = [conv[0][1] for conv in s.conversations]
        assert sum(a.count("[SEG]") for a in answers) == len(s.masks)
        h, w = s.masks.shape[1:]
        polygons = [fill_polygon(t["points"], h, w) for t in anno["scene"]]
        start = sum(a.count("[SEG]") for a in answers[:2])
        for (question, answer), in s.conversations[2:]:
            n = answer.count("[SEG]")
            masks, start = s.masks[start:start + n], start + n
            named = re.search(rf"\bthe ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b", question)
            if named:
                if re.search(r"\b(left of|right of|above|below)\b", question):
                    continue  # a relation: the target is another shape
                matches = [k for k, t in enumerate(anno["scene"]) if (t["color"], t["shape"]) == named.groups()]
                if matches:  # "the red circle" names exactly one shape
                    assert len(matches) == 1 and n == 1 and np.array_equal(masks[0], polygons[matches[0]])
                else:  # "the purple hexagon" when there is none
                    assert n == 0 and answer == f"There is no {' '.join(named.groups())} in this image."
                checked += 1
            for m in masks:  # every target is one of the scene's shapes
                assert any(np.array_equal(m, p) for p in polygons)
    assert checked >= 20 and marked >= 5


def test_extra_kind_weights_change_which_requests_are_drawn(tmp_path):
    import pytest

    from vlmsam.errors import DatasetError

    write_synth(tmp_path, 60, seed=3, progress=False)

    def uniqueness_share(weights):
        ds = SynthDataset(tmp_path, "train", captions=False, extra_requests=4, extra_kind_weights=weights)
        asked = [conv[0][0] for i in range(len(ds)) for conv in ds.load(i, random.Random(i)).conversations[1:]]
        return sum("only once" in q for q in asked) / len(asked)

    plain, favoured = uniqueness_share(None), uniqueness_share("uniqueness=50")
    assert favoured > plain + 0.2  # only scenes that allow a uniqueness request can give one
    with pytest.raises(DatasetError, match="unknown request kind 'odd'"):
        SynthDataset(tmp_path, "train", extra_kind_weights="odd=1")
    with pytest.raises(DatasetError, match="is not a number"):
        SynthDataset(tmp_path, "train", extra_kind_weights="none=x")


def test_grounding_answers_in_the_resized_frame():
    import json as _json

    from vlmsam.data.grounding_answers import grounding_answers, grounding_json

    masks = np.zeros((2, 40, 80), np.uint8)
    masks[0, 10:20, 20:40] = 1
    masks[1, 0:5, 0:4] = 1
    objects = _json.loads(grounding_json(masks, (20, 40)))  # a frame of half the size
    assert objects[0] == {"bbox_2d": [10, 5, 20, 10], "point_2d": [15, 7]}  # the mask pixel nearest its centre, scaled
    convs = [[("q1", "Sure, [SEG] and [SEG].")], [("q2", "There is no red circle in this image.")]]
    out, left, objects = grounding_answers(convs, masks, (40, 80), prefix="Two shapes. ")
    assert out[0][0][1].startswith("Two shapes. [{") and len(_json.loads(out[0][0][1][len("Two shapes. "):])) == 2
    assert out[1] == convs[1] and left.shape == (0, 40, 80)
    assert np.array_equal(objects[0], masks) and objects[1].shape == (0, 40, 80)  # what each answer's boxes are of
