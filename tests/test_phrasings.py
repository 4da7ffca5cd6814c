"""The request grammar of `vlmsam data synth --phrasing`: every kind in every family, held-out families
kept out of training scenes, and a wording that never changes what a request means."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest

from vlmsam.data import phrasings
from vlmsam.data.synth import KINDS, make_scene, write_synth


def test_every_family_words_every_kind():
    families = phrasings.grammar()["families"]
    assert set(phrasings.families("rich")).isdisjoint(phrasings.families("heldout"))
    assert set(phrasings.families("rich")) | set(phrasings.families("heldout")) == set(families)
    fields = {"attribute": {"name": "red circle"}, "relation": {"name": "red circle", "rel": "left of"},
              "superlative": {"sup": "largest star"}, "uniqueness": {"what": "colour"},
              "multiple": {"group": "blue shapes"}, "none": {"name": "green star"}}
    rng = random.Random(0)
    for name in families:
        for kind in KINDS:
            drawn = {phrasings.template(name, kind, rng) for _ in range(200)}
            assert drawn, (name, kind)
            for template in drawn:  # every template takes the slots its kind has, and names what it asks for
                text = template.format(**phrasings._slots(fields[kind], rng))
                assert text.strip() and ("{" not in text), (name, kind, text)
    composed = families["composed"]  # hundreds of wordings from a few lines: 200 draws are mostly distinct
    assert len({phrasings.template("composed", "attribute", rng) for _ in range(200)}) > 150
    assert len(composed["verb"]) >= 20 and set(composed["object"]) == set(KINDS)


def test_heldout_wordings_never_reach_training_scenes():
    rng = random.Random(0)
    heldout = {t for f in phrasings.families("heldout") for kind in KINDS for t in phrasings.grammar()["families"][f][kind]}
    assert not [f for f in phrasings.families("heldout") if "object" in phrasings.grammar()["families"][f]]
    drawn = Counter()
    for _ in range(10_000):
        kind = rng.choice(KINDS)
        _, family = phrasings.word(kind, {"name": "red circle", "rel": "above", "sup": "smallest shape",
                                          "what": "type", "group": "circles"}, rng, "rich")
        drawn[family] += 1
    assert set(drawn) == set(phrasings.families("rich"))
    assert not set(drawn) & set(phrasings.families("heldout"))
    assert len(heldout) >= 20  # enough distinct held-out wordings to be a test of their own


def test_a_wording_keeps_the_request_s_meaning():
    """The same scene and targets whatever the wording: only the text differs, and it keeps the slot words."""
    for seed in range(40):
        kind = KINDS[seed % len(KINDS)]
        scenes = {p: make_scene(random.Random(seed), kind, p) for p in ("original", "rich", "heldout")}
        if scenes["original"] is None:
            continue
        base = scenes["original"]["json"]
        for phrasing in ("rich", "heldout"):
            got = scenes[phrasing]["json"]
            assert got["phrasing"] in phrasings.families(phrasing)
            # painting order may differ (the wording draws other random numbers); the shapes and targets do not
            assert sorted(map(str, got["scene"])) == sorted(map(str, base["scene"]))
            assert [t["points"] for t in got["shapes"]] == [t["points"] for t in base["shapes"]]
            assert got["answer"] == base["answer"] and got["kind"] == base["kind"] == kind
            if kind in ("attribute", "relation", "none"):
                name = re.findall(r"\w+ (?:circle|square|triangle|star|hexagon)", base["text"][0])[-1]
                assert any(said in got["text"][0].lower() for said in phrasings.spellings(name)), (base["text"], got["text"])


def test_colour_and_shape_synonyms_name_the_same_shapes():
    """'violet disc' for 'purple circle' in some requests, every spelling one the grammar lists, plurals too."""
    rng = random.Random(4)
    fields = {"name": "purple circle", "group": "hexagons", "sup": "largest star"}
    drawn = [phrasings._slots(fields, rng) for _ in range(2000)]
    names = Counter(d["name"] for d in drawn)
    assert set(names) == phrasings.spellings("purple circle")
    assert 0.4 < names["purple circle"] / len(drawn) < 0.6  # (1 - rate)^2 of draws keep both words
    groups = {d["group"] for d in drawn}
    assert groups == {"hexagons", "six-sided shapes", "hexagonal shapes"}
    assert all(d["each"] + "s" == d["group"] for d in drawn)
    assert {d["sup"].split(" ", 1)[1] for d in drawn} == {"star", "five-pointed star", "star shape"}
    assert phrasings._slots({"name": "red circle"}, random.Random(0))["name"] in phrasings.spellings("red circle")


def test_synth_writes_the_phrasing_it_was_asked_for(tmp_path):
    write_synth(tmp_path / "h", 12, seed=3, splits={"test": 1.0}, progress=False, phrasing="heldout")
    records = [json.loads(p.read_text()) for p in (tmp_path / "h" / "reason_seg" / "ReasonSeg" / "test").glob("*.json")]
    assert len(records) == 12 and {r["phrasing"] for r in records} <= set(phrasings.families("heldout"))
    write_synth(tmp_path / "o", 12, seed=3, splits={"test": 1.0}, progress=False)
    assert not any("phrasing" in json.loads(p.read_text()) for p in (tmp_path / "o").rglob("*.json"))
    with pytest.raises(Exception, match="unknown phrasing 'fancy'"):
        write_synth(tmp_path / "x", 2, phrasing="fancy", progress=False)


def test_the_cli_writes_held_out_wordings(tmp_path):
    from tests.conftest import run_cli

    done = run_cli("data", "synth", "--out", tmp_path, "--n", "10", "--seed", "5", "--phrasing", "heldout")
    assert done.returncode == 0, done.stderr
    records = [json.loads(p.read_text()) for p in tmp_path.rglob("*.json")]
    assert len(records) == 10 and all(r["phrasing"] in phrasings.families("heldout") for r in records)
    bad = run_cli("data", "synth", "--out", tmp_path / "x", "--n", "2", "--phrasing", "fancy")
    assert bad.returncode == 2 and "--phrasing" in bad.stderr


def test_scores_are_reported_per_wording_family(tmp_path):
    """Held-out scenes scored with no mask anywhere: each family's gIoU is its share of no-target requests
    (an empty answer is right exactly there), computed here from the scene files alone."""
    from vlmsam.data.registry import build_eval_dataset
    from vlmsam.evaluation.score import score_predictions

    write_synth(tmp_path / "d", 30, seed=11, splits={"test": 1.0}, progress=False, phrasing="heldout")
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "d").rglob("*.json")}
    lines = [json.dumps({"image": stem, "query": r["text"][0], "answer": "", "masks": []}) for stem, r in records.items()]
    (tmp_path / "preds.jsonl").write_text("\n".join(lines) + "\n")
    metrics = score_predictions(tmp_path / "preds.jsonl", build_eval_dataset("reason_seg:test", tmp_path / "d"), progress=False)
    expected = {}
    for r in records.values():
        hits, n = expected.get(r["phrasing"], (0, 0))
        expected[r["phrasing"]] = (hits + (r["kind"] == "none"), n + 1)
    assert set(metrics["by_phrasing"]) == set(expected) <= set(phrasings.families("heldout"))
    for family, (hits, n) in expected.items():
        assert metrics["by_phrasing"][family]["n"] == n
        assert metrics["by_phrasing"][family]["giou"] == pytest.approx(hits / n, abs=1e-6)


def _patterns(templates) -> list[re.Pattern]:
    """Each template as a whole-text pattern, its slots as wildcards (case-insensitive: some texts are lowered)."""
    return [re.compile(re.sub(r"\\\{\w+\\\}", ".+", re.escape(t)), re.IGNORECASE) for t in templates]


def _family_patterns(name: str) -> list[re.Pattern]:
    """Every wording of a family as whole-text patterns; a composed family as one pattern of its parts."""
    family = phrasings.grammar()["families"][name]
    if "object" not in family:
        return _patterns(t for k in KINDS for t in family[k] if re.sub(r"\{\w+\}", "", t).strip())  # a bare slot matches anything
    alternatives = lambda parts: "(?:" + "|".join(sorted((re.escape(x) for x in parts), key=len, reverse=True)) + ")"
    objects = [t for k in KINDS for t in family["object"][k]]
    pattern = (alternatives(family["prefix"]) + alternatives(family["verb"]) + " " + alternatives(objects)
               + alternatives(family["suffix"]))
    return [re.compile(re.sub(r"\\\{\w+\\\}", ".+", pattern), re.IGNORECASE)]


def test_training_scenes_and_their_further_requests_never_use_held_out_wordings(tmp_path):
    """10,000 training requests: 2,000 scenes written with ``--phrasing rich`` and four further requests about
    each as the trainer draws them (``synth_extra_phrasing: mixed``). None is a held-out wording; most are
    recognisably the rich grammar's or the generator's own (the rest carry a typo), so the check can see."""
    from vlmsam.data.synth import PHRASE, SENTENCE
    from vlmsam.data.synth_dataset import SynthDataset

    heldout = [p for f in phrasings.families("heldout") for p in _family_patterns(f)]
    known = ([p for f in phrasings.families("rich") for p in _family_patterns(f)]
             + _patterns(t for table in (PHRASE, SENTENCE) for k in KINDS for t in table[k]))
    write_synth(tmp_path, 2000, seed=4, splits={"train": 1.0}, progress=False, phrasing="rich")
    ds = SynthDataset(tmp_path, "train", extra_requests=4, extra_phrasing="mixed")
    files = [json.loads(p.read_text()) for p in ds.items]
    assert {r["phrasing"] for r in files} == set(phrasings.families("rich"))
    rng = random.Random(0)
    texts = [text for r in files for text, *_ in ds._more_requests(r["scene"], rng)]
    assert len(files) + len(texts) == 10_000
    assert not [t for t in texts if any(p.fullmatch(t) for p in heldout)]
    assert sum(any(p.fullmatch(t) for p in known) for t in texts) > 0.8 * len(texts)
    originals = sum(any(p.fullmatch(t) for p in _patterns(t for tb in (PHRASE, SENTENCE) for k in KINDS for t in tb[k]))
                    for t in texts)
    assert 0.35 * len(texts) < originals < 0.65 * len(texts)  # mixed: half in the generator's own words
    with pytest.raises(Exception, match="synth extra phrasing must be one of"):
        SynthDataset(tmp_path, "train", extra_phrasing="fancy")


def test_made_up_filler_words_leave_the_request_s_words_in_place():
    """``with_unknown_words`` (training's ``synth_request_noise``) adds words no template or slot uses, at
    filler places only: removing them gives back the request, every word naming the target in order."""
    known = phrasings._known_words()
    rng = random.Random(0)
    texts = ["Segment the red circle.", "where is the largest star?", "the violet disc",
             "Could you please mark all the red circles for me?", "find the shape whose colour is not shared by any other"]
    replaced = 0
    for _ in range(400):
        text = rng.choice(texts)
        noisy = phrasings.with_unknown_words(text, rng)
        said = {w.strip(".?").lower() for w in text.split(" ")}
        added = [w.strip(".?") for w in noisy.split(" ") if w.strip(".?").lower() not in known | said]
        assert 1 <= len(added) <= 4 and noisy != text, noisy
        kept = [w for w in noisy.split(" ") if w.strip(".?") not in added]
        original = text.split(" ")
        body = [w.lower().strip(".?") for w in kept]
        if len(kept) == len(original) - 1:  # the leading verb was the one replaced
            replaced += 1
            original = original[1:]
        assert body == [w.lower().strip(".?") for w in original], (text, noisy)
        assert noisy[-1:] in ".?" if text[-1] in ".?" else True
    assert 0 < replaced < 100


def test_request_noise_changes_only_the_wording_of_training_samples(tmp_path):
    from vlmsam.data.synth_dataset import SynthDataset

    write_synth(tmp_path, 20, seed=4, splits={"train": 1.0}, progress=False, phrasing="rich")
    plain = SynthDataset(tmp_path, "train", extra_requests=3, extra_phrasing="mixed")
    noisy = SynthDataset(tmp_path, "train", extra_requests=3, extra_phrasing="mixed", request_noise=1.0)
    changed = 0
    for i in range(20):
        a, b = plain.load(i, random.Random(i)), noisy.load(i, random.Random(i))
        assert (a.masks == b.masks).all() and a.meta["no_target"] == b.meta["no_target"]
        assert [c[0][1] for c in a.conversations] == [c[0][1] for c in b.conversations]  # the same answers
        changed += sum(x[0][0] != y[0][0] for x, y in zip(a.conversations, b.conversations))
    assert changed >= 20 * 4 - 5  # every request (the caption excepted); LISA's wrapper draws may coincide
    # the same made-up words in another process (a resumed run, another rank, a DataLoader worker)
    import subprocess
    import sys

    code = ("import random, sys; from vlmsam.data.synth import SynthDataset; "
            "d = SynthDataset(sys.argv[1], 'train', extra_requests=3, request_noise=1.0); "
            "print([c[0][0] for i in range(5) for c in d.load(i, random.Random(i)).conversations])")
    runs = [subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] and runs[0].count("?") + runs[0].count(".") > 10
    with pytest.raises(Exception, match="synth request noise is a share"):
        SynthDataset(tmp_path, "train", request_noise=2.0)


def test_no_target_requests_asked_as_a_relation_to_the_absent_shape(tmp_path):
    """``synth_absent_anchor``: "the shape left of the purple star" when no purple star is there has no target
    either; the answer names the absent shape. At 0 the further requests are drawn exactly as before."""
    from vlmsam.data.synth import RELATIONS, more_requests

    write_synth(tmp_path, 30, seed=4, splits={"train": 1.0}, progress=False, phrasing="rich")
    scenes = [json.loads(p.read_text())["scene"] for p in sorted((tmp_path / "reason_seg").rglob("*.json"))]
    weights = (0.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # only no-target requests
    asked = 0
    for k, scene in enumerate(scenes):
        names = {f"{s['color']} {s['shape']}" for s in scene}
        for text, _, answer, targets in more_requests(scene, 4, random.Random(k), weights, "original", absent_anchor=1.0):
            absent = answer.removeprefix("There is no ").removesuffix(" in this image.")
            assert not targets and absent not in names and absent in text
            rels = [r for r in RELATIONS if r in text]
            assert rels, text  # the generator's own relation words (phrasing original)
            asked += 1
        plain = more_requests(scene, 4, random.Random(k), weights, "original")
        assert plain == more_requests(scene, 4, random.Random(k), weights, "original", absent_anchor=0.0)
        assert not any(r in t for t, *_ in plain for r in RELATIONS)
    assert asked == 4 * len(scenes)


def test_no_target_requests_that_need_the_kind_read(tmp_path):
    """``synth_kind_check``: a no-target request names a colour in the picture with a kind that is not there (the
    colour alone does not settle it); at 0 the further requests are drawn exactly as before; out of range is refused."""
    from vlmsam.data.synth import SHAPES, absent_named, more_requests
    from vlmsam.data.synth_dataset import SynthDataset

    write_synth(tmp_path, 30, seed=5, splits={"train": 1.0}, progress=False)
    scenes = [json.loads(p.read_text())["scene"] for p in sorted((tmp_path / "reason_seg").rglob("*.json"))]
    weights = (0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    checked = 0
    for k, scene in enumerate(scenes):
        colours, kinds = {s["color"] for s in scene}, {s["shape"] for s in scene}
        for text, _, answer, targets in more_requests(scene, 4, random.Random(k), weights, "original", kind_check=1.0):
            colour, kind = answer.removeprefix("There is no ").removesuffix(" in this image.").split(" ")
            assert absent_named(answer) == f"{colour} {kind}" and absent_named("[SEG].") is None
            assert not targets and f"{colour} {kind}" in text
            if kinds != set(SHAPES):  # every kind in the picture: no such name, the drawn one stays
                assert colour in colours and kind not in kinds, (text, scene)
                checked += 1
        plain = more_requests(scene, 4, random.Random(k), weights, "original")
        assert plain == more_requests(scene, 4, random.Random(k), weights, "original", kind_check=0.0)
    assert checked >= 60
    with pytest.raises(Exception, match="synth kind check is a share"):
        SynthDataset(tmp_path, "train", kind_check=-0.1)


def test_by_wording_scores_the_requests_that_hold_a_phrase_apart(tmp_path):
    """tools/by_wording.py: perfect masks for requests holding the phrase, none for the rest, gives 1.0 and the
    rest's share of no-target scenes (an empty prediction is right exactly there)."""
    import subprocess
    import sys

    import numpy as np
    from pycocotools import mask as mask_utils

    from tools.by_wording import request_iou
    from vlmsam.data.masks import fill_polygon

    write_synth(tmp_path, 40, seed=2, splits={"test": 1.0}, progress=False, phrasing="rich")
    scenes = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "reason_seg" / "ReasonSeg" / "test").glob("*.json")}
    phrase = "the"
    lines = []
    for stem, s in scenes.items():
        masks = [np.asfortranarray(fill_polygon(shape["points"], s["imageHeight"], s["imageWidth"]).astype(np.uint8))
                 for shape in s["shapes"]] if phrase in s["text"][0].lower() else []
        rles = [{**r, "counts": r["counts"].decode()} for r in map(mask_utils.encode, masks)]
        lines.append(json.dumps({"image": stem, "masks": rles}))
        assert request_iou({"masks": rles}, s) == (1.0 if rles or not s["shapes"] else 0.0)
    (tmp_path / "p.jsonl").write_text("\n".join(lines))
    out = subprocess.run([sys.executable, "-m", "tools.by_wording", str(tmp_path / "p.jsonl"), str(tmp_path), phrase],
                         capture_output=True, text=True, check=True).stdout
    holds = [s for s in scenes.values() if phrase in s["text"][0].lower()]
    rest = [s for s in scenes.values() if phrase not in s["text"][0].lower()]
    assert holds and rest and f'with "{phrase}": {len(holds)} requests, gIoU 1.000' in out
    share = np.mean([s["kind"] == "none" for s in rest])
    assert f"without: {len(rest)} requests, gIoU {share:.3f}" in out


def test_no_target_misses_are_split_by_what_the_picture_holds(tmp_path):
    """tools/no_target.py: a mask given exactly for the no-target requests whose named colour is in the picture is
    counted as missed there and nowhere else; the kind and colour groups add up to the same requests."""
    import subprocess
    import sys

    write_synth(tmp_path, 200, seed=3, splits={"test": 1.0}, progress=False)
    lines, with_colour, without = [], 0, 0
    for path in (tmp_path / "reason_seg" / "ReasonSeg" / "test").glob("*.json"):
        s = json.loads(path.read_text())
        shown = s["kind"] == "none" and any(x["color"] == s["answer"].split()[3] for x in s["scene"])
        with_colour += shown
        without += s["kind"] == "none" and not shown
        lines.append(json.dumps({"image": path.stem, "masks": [{"size": [1, 1], "counts": "01"}] if shown else []}))
    (tmp_path / "p.jsonl").write_text("\n".join(lines))
    out = subprocess.run([sys.executable, "-m", "tools.no_target", str(tmp_path / "p.jsonl"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert with_colour and without
    assert f"its colour in the picture: True: {with_colour} of {with_colour} answered" in out
    assert f"its colour in the picture: False: 0 of {without} answered" in out
    kinds = [int(n) for n in re.findall(r"its kind in the picture: \w+: \d+ of (\d+)", out)]
    assert sum(kinds) == with_colour + without
