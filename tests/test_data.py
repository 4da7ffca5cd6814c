"""Loaders against trees the tests write themselves; masks checked pixel by pixel."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest

from tests.helpers import dataset_trees as trees
from vlmsam.data import prompts
from vlmsam.data.mixture import Mixture, ResumableSampler
from vlmsam.data.reason_seg import ReasonSegDataset
from vlmsam.data.refer_seg import ReferSegDataset
from vlmsam.data.registry import build_eval_dataset, build_family
from vlmsam.data.safe_pickle import UnsafePickleError, load_pickle
from vlmsam.data.sample import BadSample
from vlmsam.data.seg_pp import SegPlusPlusDataset
from vlmsam.data.sem_seg import Ade20kDataset, CocoStuffDataset, MapillaryDataset, PacoLvisDataset, PascalPartDataset
from vlmsam.data.vqa import VqaDataset


def questions(sample):
    return [user for conv in sample.conversations for user, _ in conv]


def answers(sample):
    return [a for conv in sample.conversations for _, a in conv]


# ---- ReasonSeg ----------------------------------------------------------------------------------


def test_reason_seg_masks_largest_first_ignore_and_flag(tmp_path):
    expected = trees.write_reason_seg(tmp_path)
    ds = ReasonSegDataset(tmp_path, "train", explanatory=0.0)
    assert [p.stem for p in ds.items] == ["desk", "empty", "kitchen"]
    for i, path in enumerate(ds.items):
        sample = ds.load(i, random.Random(i))
        assert sample.masks.dtype == np.uint8 and sample.source == "reason_seg"
        assert len(sample.masks) == sample.seg_count == len(sample.conversations)
        for mask in sample.masks:
            np.testing.assert_array_equal(mask, expected[path.stem])
    desk = ds.load(0, random.Random(0))
    assert questions(desk)[0] in [t.format(sent="Which object would you use to write a letter?") for t in prompts.LONG_QUESTIONS]
    assert answers(desk)[0] in prompts.ANSWERS
    assert ds.image_path(0).suffix == ".png"


def test_reason_seg_eval_prompt_and_layout_without_subfolder(tmp_path):
    expected = trees.write_reason_seg(tmp_path)
    (tmp_path / "reason_seg" / "ReasonSeg").rename(tmp_path / "rs")
    (tmp_path / "rs").rename(tmp_path / "reason_seg" / "x")
    (tmp_path / "reason_seg" / "x" / "val").rename(tmp_path / "reason_seg" / "val")  # Qwen-SAM's layout
    ds = build_eval_dataset("reason_seg:val", tmp_path)
    sample = ds.load_eval(0)
    assert sample.conversations == [[("What would stop traffic? Please output segmentation mask.", "[SEG].")]]
    assert sample.meta["queries"] == ["What would stop traffic?"] and sample.meta["is_sentence"] == [True]
    np.testing.assert_array_equal(sample.masks[0], expected["street"])


def test_reason_seg_explanatory_answers(tmp_path):
    trees.write_reason_seg(tmp_path)
    ds = ReasonSegDataset(tmp_path, "train", explanatory=1.0)  # always the explanation-only variant
    kitchen = [p.stem for p in ds.items].index("kitchen")
    sample = ds.load(kitchen, random.Random(0))
    assert len(sample.masks) == 0 and sample.seg_count == 0
    assert all(a == "A knife has a sharp blade." for a in answers(sample))
    kinds = set()
    ds.explanatory = 0.0  # [SEG] alone or [SEG] + explanation
    for seed in range(20):
        s = ds.load(kitchen, random.Random(seed))
        kinds.add(answers(s)[0].endswith("A knife has a sharp blade."))
        assert s.seg_count == len(s.masks) == len(s.conversations)
    assert kinds == {True, False}


def test_reason_seg_broken_annotations_name_the_file(tmp_path):
    trees.write_reason_seg(tmp_path)
    folder = tmp_path / "reason_seg" / "ReasonSeg" / "train"
    (folder / "desk.json").write_text("{not json")
    (folder / "empty.jpg").unlink()
    (folder / "kitchen.json").write_text('{"text": ["x"], "shapes": [{"label": "a", "points": [[1, "b"]]}]}')
    ds = ReasonSegDataset(tmp_path, "train")
    errors = {}
    for i in range(len(ds)):
        with pytest.raises(BadSample) as info:
            ds.load(i, random.Random(0))
        errors[info.value.path.split("/")[-1]] = info.value.reason
    assert errors["desk.json"].startswith("unreadable annotation")
    assert errors["empty.jpg"] == "image file not found"
    assert "malformed points" in errors["kitchen.json"]


# ---- referring ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, split_by", [("refcoco", "unc"), ("refcocog", "umd"), ("refclef", "unc")])
def test_refer_polygons_and_rle(tmp_path, name, split_by):
    expected = trees.write_refer(tmp_path, name, split_by)
    ds = ReferSegDataset(tmp_path, name, "train")
    assert len(ds) == 1  # one image holds both train refs
    sample = ds.load(0, random.Random(0))
    assert len(sample.masks) == sample.seg_count == 2
    got = {m.tobytes() for m in sample.masks}
    assert got == {expected[100].tobytes(), expected[101].tobytes()}
    assert set(np.unique(sample.masks)) <= {0, 1}  # overlapping polygons are OR-ed, never 2
    val = build_eval_dataset(f"{name}|{split_by}|val", tmp_path)
    ev = val.load_eval(0)
    assert ev.meta["queries"] == ["small box", "top left box"]
    assert questions(ev) == ["What is small box in this image? Please output segmentation mask."] + \
        ["What is top left box in this image? Please output segmentation mask."]
    for m in ev.masks:
        np.testing.assert_array_equal(m, expected[102])


def test_refer_pickle_with_code_is_refused(tmp_path):
    trees.write_refer(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "refer_seg" / "refcoco" / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "payload": Evil()}]))
    with pytest.raises(UnsafePickleError, match=r"refs\(unc\)\.p: the pickle holds more than plain data .*builtins\.print"):
        ReferSegDataset(tmp_path, "refcoco", "train")


def test_safe_pickle_reads_plain_python2_style_data(tmp_path):
    data = [{"sentences": [{"sent": "a"}], "split": "train", "ids": (1, 2), "x": 1.5, "flag": None, "b": b"\x00"}]
    for protocol in (0, 2, 5):
        p = tmp_path / f"p{protocol}"
        p.write_bytes(pickle.dumps(data, protocol=protocol))
        assert load_pickle(p) == data
    (tmp_path / "junk").write_bytes(b"not a pickle")
    with pytest.raises(UnsafePickleError, match="not a readable pickle"):
        load_pickle(tmp_path / "junk")


# ---- semantic / parts ---------------------------------------------------------------------------


def _class_masks(ds, label, ignore):
    """Every sample's (class name -> mask) over many draws, checked against the label we wrote."""
    seen = set()
    for seed in range(12):
        s = ds.load(0, random.Random(seed))
        assert s.seg_count == len(s.masks) == len(s.meta["classes"])
        for name, mask in zip(s.meta["classes"], s.masks):
            k = ds.classes.index(name)
            np.testing.assert_array_equal(mask, np.where(ignore, 255, label == k).astype(np.uint8))
            seen.add(name)
    return seen


def test_ade20k_shifts_labels_and_ignores_other(tmp_path):
    stored = trees.write_ade20k(tmp_path)
    ds = Ade20kDataset(tmp_path)
    seen = _class_masks(ds, stored.astype(int) - 1, stored == 0)
    assert seen == {"wall", "tree"}  # stored 1 -> class 0 (wall), stored 5 -> class 4 (tree)


def test_cocostuff_ignores_vague_classes(tmp_path):
    label = trees.write_cocostuff(tmp_path)
    ds = CocoStuffDataset(tmp_path)
    seen = _class_masks(ds, label, (label == 255) | (label == 95))
    assert seen == {"person", "bicycle"}  # never building-other


def test_mapillary_class_list_and_unlabeled(tmp_path):
    label = trees.write_mapillary(tmp_path)
    ds = MapillaryDataset(tmp_path)
    assert _class_masks(ds, label, label == 2) == {"road"}


@pytest.mark.parametrize("kind, cls", [("paco_lvis", PacoLvisDataset), ("pascal_part", PascalPartDataset)])
def test_coco_parts_union_of_instances_and_part_names(tmp_path, kind, cls):
    expected = trees.write_coco_parts(tmp_path, kind)
    ds = cls(tmp_path)
    names = set()
    for seed in range(16):
        s = ds.load(0, random.Random(seed))
        for name, mask in zip(s.meta["classes"], s.masks):
            names.add(name)
            key = {"mug": "mug", "mug handle": "mug:handle", "the handle of the mug": "mug:handle",
                   "dog body": "dog:body", "the body of the dog": "dog:body", "dog leg": "dog:leg",
                   "the leg of the dog": "dog:leg"}[name]
            np.testing.assert_array_equal(mask, expected[key])
    if kind == "paco_lvis":
        assert names == {"mug", "mug handle", "the handle of the mug"}
    else:
        assert names == {"dog body", "the body of the dog", "dog leg", "the leg of the dog"}


def test_label_map_with_unknown_value_is_bad(tmp_path):
    from PIL import Image

    trees.write_ade20k(tmp_path)
    path = tmp_path / "ade20k" / "annotations" / "training" / "ADE_train_00000001.png"
    Image.fromarray(np.full((24, 32), 200, np.uint8)).save(path)
    with pytest.raises(BadSample, match=r"ADE_train_00000001\.png: label values \[199\]"):
        Ade20kDataset(tmp_path).load(0, random.Random(0))


# ---- VQA and seg++ ------------------------------------------------------------------------------


def test_vqa_turns_without_image_placeholder(tmp_path):
    trees.write_vqa(tmp_path)
    ds = VqaDataset(tmp_path)
    assert len(ds) == 1 and ds.text_only == 1
    s = ds.load(0, random.Random(0))
    assert s.conversations == [[("What is in the picture?", "Noise."), ("Which colours?", "All of them.")]]
    assert s.masks.shape == (0, 20, 20)


def test_seg_pp_markers_become_seg_tokens(tmp_path):
    expected = trees.write_seg_pp(tmp_path)
    ds = SegPlusPlusDataset(tmp_path)
    kinds = [k for k, _ in ds.items]
    cap = ds.load(kinds.index("caption"), random.Random(0))
    assert cap.conversations == [[("Describe the image.", "Two things: [SEG] [SEG] on a table.")]]
    np.testing.assert_array_equal(cap.masks, np.stack([expected["1"], expected["2"]]))
    inst = ds.load(kinds.index("instance_seg"), random.Random(0))
    assert inst.seg_count == len(inst.masks) == 2
    for (q, _), mask in zip([c[0] for c in inst.conversations], inst.masks):
        key = "1_poly" if "cup" in q else "2_poly"
        np.testing.assert_array_equal(mask, expected[key])


def test_seg_pp_marker_without_mask_is_bad(tmp_path):
    from datasets import Dataset

    trees.write_seg_pp(tmp_path)
    rows = [{"image_path": "000000000100.jpg", "English Question": "q", "English Answer": "a 《7|ghost》", "is_rle": True, "info": "{}"}]
    tmp = tmp_path / "_hf"
    Dataset.from_list(rows).save_to_disk(str(tmp))
    (tmp / "data-00000-of-00001.arrow").rename(tmp_path / "seg++" / "cot.arrow")
    ds = SegPlusPlusDataset(tmp_path, ["cot"])
    with pytest.raises(BadSample, match="no mask for instance 7"):
        ds.load(0, random.Random(0))


# ---- prompts ------------------------------------------------------------------------------------


def test_multi_class_grouping():
    rng = random.Random(0)
    sizes = [tuple(prompts.group_sizes(3, rng)) for _ in range(3000)]
    first = [s[0] for s in sizes]
    for k, p in zip((1, 2, 3), (0.4, 0.3, 0.3)):
        assert abs(first.count(k) / len(first) - p) < 0.03
    assert all(sum(s) == 3 for s in sizes)
    assert prompts.multi_question(["Cat", "dog", "bird"]) == "Can you segment cat, dog, and bird separately in this image?"
    assert prompts.multi_answer(2) == "Sure, they are [SEG] and [SEG]."
    assert prompts.multi_answer(3) == "Sure, they are [SEG], [SEG], and [SEG]."
    convs = prompts.class_conversations(["a", "b", "c"], random.Random(5))
    assert sum(a.count("[SEG]") for c in convs for _, a in c) == 3
    assert prompts.eval_question("the knife", False) == "What is the knife in this image? Please output segmentation mask."
    assert prompts.strip_image_placeholder("<image>\nWhat?") == "What?" == prompts.strip_image_placeholder("What?\n<image>")
    assert not any("<image>" in t for t in prompts.SHORT_QUESTIONS + prompts.LONG_QUESTIONS)


# ---- mixture ------------------------------------------------------------------------------------


@pytest.fixture
def families(tmp_path):
    trees.write_all(tmp_path)
    return {
        "reason_seg": build_family("reason_seg", tmp_path),
        "refer_seg": build_family("refer_seg", tmp_path, "refcoco,refcocog"),
        "sem_seg": build_family("sem_seg", tmp_path),
        "vqa": build_family("vqa", tmp_path),
    }


def _draws(mix, ks):
    return [(s.source, s.name, str(s.conversations)) for s in (mix[k] for k in ks)]


def test_mixture_deterministic_per_seed_and_rank_and_rates(families):
    rates = {"reason_seg": 1, "refer_seg": 3, "sem_seg": 9, "vqa": 1}
    a = Mixture(families, rates, seed=3, rank=0)
    assert _draws(a, range(30)) == _draws(Mixture(families, rates, seed=3, rank=0), range(30))
    assert _draws(a, range(30)) != _draws(Mixture(families, rates, seed=3, rank=1), range(30))
    assert _draws(a, range(30)) != _draws(Mixture(families, rates, seed=4, rank=0), range(30))
    sem = {"ade20k", "cocostuff", "mapillary", "paco_lvis", "pascal_part"}
    sources = [a.draw(k)[0].source for k in range(2800)]
    share = sum(s in sem for s in sources) / len(sources)
    assert abs(share - 9 / 14) < 0.03
    assert abs(sources.count("vqa") / len(sources) - 1 / 14) < 0.02


def test_sampler_resumes_where_it_stopped(families):
    mix = Mixture(families, {"reason_seg": 1, "refer_seg": 1, "sem_seg": 1, "vqa": 1}, seed=0, samples_per_epoch=10)
    full = list(ResumableSampler(10))
    first = ResumableSampler(10)
    it = iter(first)
    head = [next(it) for _ in range(4)]
    resumed = ResumableSampler(10)
    resumed.load_state_dict(first.state_dict())
    assert head + list(resumed) == full
    assert _draws(mix, head + list(ResumableSampler(10, start=4))) == _draws(mix, full)
    assert list(ResumableSampler(10, start=10)) == list(range(10, 20))  # the next epoch


def test_bad_samples_skipped_and_counted_or_raised(families, tmp_path):
    (tmp_path / "reason_seg" / "ReasonSeg" / "train" / "kitchen.json").write_text("garbage")
    (tmp_path / "reason_seg" / "ReasonSeg" / "train" / "desk.json").write_text("garbage")
    (tmp_path / "reason_seg" / "ReasonSeg" / "train" / "empty.json").write_text("garbage")
    fams = {"reason_seg": build_family("reason_seg", tmp_path), "vqa": families["vqa"]}
    mix = Mixture(fams, {"reason_seg": 5, "vqa": 1}, seed=0)
    samples = [mix[k] for k in range(10)]
    assert all(s.source == "vqa" for s in samples)
    skipped = [x for s in samples for x in s.meta["skipped"]]
    assert skipped and all(src == "reason_seg" and path.endswith(".json") for src, path, _ in skipped)
    strict = Mixture(fams, {"reason_seg": 5, "vqa": 1}, seed=0, on_bad_sample="error")
    with pytest.raises(BadSample, match=r"\.json: unreadable annotation"):
        [strict[k] for k in range(10)]
