"""Property tests of the annotation boundary: whatever a ReasonSeg json holds (any JSON document, any
field of a valid annotation replaced by any value, NaN, deep nesting, lone surrogates, bytes that are
not text), the loader and validator that `data check`, `evaluate`, `score` and `train` share either give
a valid sample or a DatasetError naming the file, never another exception; and `data check` calls the
tree usable exactly when evaluate's validation accepts the sample."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import dataset_trees as trees
from vlmsam.data.check import run_check
from vlmsam.data.reason_seg import ReasonSegDataset
from vlmsam.data.sample import Sample
from vlmsam.data.validate import load_checked
from vlmsam.errors import DatasetError
from vlmsam.evaluation.evaluate import _requests
from vlmsam.evaluation.scoring import Scorer

VALID = {"text": ["What would stop traffic?", "the sign"], "is_sentence": True, "kind": "attribute",
         "shapes": [{"label": "sign", "points": [[1, 2], [8, 2], [8, 9], [1, 9]]},
                    {"label": "ignore", "points": [[20, 20], [30, 20], [30, 30]]}]}

# JSON values, including what Python's json writes but JSON forbids (NaN, Infinity) and lone surrogates.
text = st.text(alphabet=st.characters(exclude_categories=()), max_size=30) | st.sampled_from(
    ["", "   ", "\udcff", "x" * 2001, "a\x00b", "<|im_end|>", "[SEG]"])
scalars = (st.none() | st.booleans() | st.integers(min_value=-(10 ** 30), max_value=10 ** 30) | st.just(10 ** 400)
           | st.floats(allow_nan=True, allow_infinity=True) | text)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                      max_leaves=12)
# Where in a valid annotation a value can go: a top-level field, a shape, a shape's field, a point, a coordinate.
PLACES = [("text",), ("text", 0), ("is_sentence",), ("kind",), ("shapes",), ("shapes", 0), ("shapes", 0, "label"),
          ("shapes", 0, "points"), ("shapes", 0, "points", 1), ("shapes", 1, "points", 2, 0), ("shapes", 1, "points", 0, 1)]


def _mutated(place, value):
    anno = json.loads(json.dumps(VALID))
    target = anno
    for key in place[:-1]:
        target = target[key]
    target[place[-1]] = value
    return json.dumps(anno)


def _deep(depth: int, opener: str) -> str:
    """A valid annotation whose ``shapes`` is nested ``depth`` deep (in arrays or objects)."""
    nested = "[" * depth + "1" + "]" * depth if opener == "[" else '{"a": ' * depth + "1" + "}" * depth
    return json.dumps({**VALID, "shapes": "X"}).replace('"X"', nested)


documents = st.one_of(
    values.map(lambda v: json.dumps(v, allow_nan=True)),  # any JSON document at all
    st.tuples(st.sampled_from(PLACES), values).map(lambda pv: _mutated(*pv)),  # a valid one, one field changed
    st.tuples(st.sampled_from(PLACES), st.sampled_from([None, float("nan"), [], {}, "", 10 ** 400, -1e6 - 1])).map(
        lambda pv: _mutated(*pv)),
    st.tuples(st.integers(60, 5000), st.sampled_from("[{")).map(lambda d: _deep(*d)),  # nesting around the limit
    st.integers(0, 300).map(lambda n: json.dumps(VALID)[:n]),  # cut short
    st.just("[" * 100_000),
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A real ReasonSeg tree whose one val annotation each example overwrites."""
    root = tmp_path_factory.mktemp("anno_property")
    trees.write_reason_seg(root)
    return root


def _check(root: Path, content: str | bytes) -> None:
    file = root / "reason_seg" / "ReasonSeg" / "val" / "street.json"
    file.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    ds = ReasonSegDataset(root, "val")
    try:
        sample, _ = load_checked(ds, 0)
        accepted = True
        assert isinstance(sample, Sample) and sample.masks.shape == (1, 40, 50) and sample.meta["queries"]
        load_checked(ds, 0, random.Random(0))  # the training form accepts what evaluation accepts
        scorer = Scorer(split_by_length=True)  # and what evaluate and score then do with it works
        for _, target, _, is_sentence, kind, _ in _requests(sample):
            scorer.update(target[None] == 1, target, is_sentence, kind)
        assert scorer.metrics()["n"] == len(sample.masks)
    except DatasetError as exc:
        accepted = False
        assert str(file) in str(exc), str(exc)[:300]
    printed = []
    usable = run_check(root, ["reason_seg"], workers=1, progress=False, print_fn=printed.append)
    assert usable == accepted, "\n".join(printed)[-2000:]
    if not accepted:
        assert any(str(file) in line for line in printed)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(documents)
def test_any_annotation_is_a_sample_or_a_named_dataset_error(tree, content):
    _check(tree, content)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_a_sample_or_a_named_dataset_error(tree, content):
    _check(tree, content)


def test_the_valid_annotation_is_accepted(tree):
    (tree / "reason_seg" / "ReasonSeg" / "val" / "street.json").write_text(json.dumps(VALID))
    sample, image = load_checked(ReasonSegDataset(tree, "val"), 0)
    assert image.size == (50, 40) and sample.meta["kinds"] == ["attribute"] and np.isin(sample.masks, (0, 1, 255)).all()
