"""Property: whatever a ``--requests`` file holds (any JSON document, any text with surrogates and control
characters, deep nesting, raw bytes), the reader ``segment --requests`` uses returns valid jobs or raises
a one-line VlmsamError; never another exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlmsam.cli.batch import read_requests
from vlmsam.engine.contract import MAX_REQUEST_CHARS
from vlmsam.errors import VlmsamError

ANY_CHAR = st.characters(codec=None, exclude_categories=())  # surrogates and control characters included
TEXT = st.text(ANY_CHAR, max_size=40) | st.sampled_from(["", " ", "the red square", "\udcff", "a\x00b", "\u2028", "x" * 2001])
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | TEXT
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)
JOBS = st.fixed_dictionaries({"image": TEXT, "request": TEXT}, optional={"x": JSON})
DEEP = st.integers(60, 100_000).map(lambda n: "[" * n + "]" * n) | st.integers(60, 5_000).map(
    lambda n: '{"image": "a.png", "request": ' + "[" * n + '"x"' + "]" * n + "}")
PLAIN = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=30)
GOOD = st.fixed_dictionaries({"image": PLAIN, "request": PLAIN}).map(json.dumps)
LINE = GOOD | (JOBS | JSON).map(lambda v: json.dumps(v, allow_nan=True)) | st.text(ANY_CHAR, max_size=80) | DEEP


def _file(lines: list[str]) -> bytes:
    return "\n".join(lines).encode("utf-8", "surrogatepass")


FILE = st.lists(GOOD, min_size=1, max_size=4).map(_file) | st.lists(LINE, max_size=6).map(_file) | st.binary(max_size=200)


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return tmp_path_factory.mktemp("requests") / "requests.jsonl"


def check(path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        jobs = read_requests(path)
    except VlmsamError as exc:
        assert str(exc).strip() and len(str(exc).splitlines()) == 1, str(exc)
        assert str(path) in str(exc)
        return
    assert jobs
    for image, request in jobs:
        assert isinstance(image, str) and image.strip() and isinstance(request, str) and request.strip()
        assert len(request) <= MAX_REQUEST_CHARS
        image.encode("utf-8"), request.encode("utf-8")  # valid Unicode: no lone surrogates
        assert not any(ch < " " and ch not in "\t\n\r" for ch in image + request)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=FILE)
def test_any_requests_file_gives_jobs_or_one_line(path, data):
    check(path, data)


@settings(max_examples=100, deadline=None)
@given(jobs=st.lists(st.tuples(st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=20),
                               st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=60)),
                     min_size=1, max_size=5))
def test_good_lines_come_back_as_written(path, jobs):
    lines = [json.dumps({"image": i, "request": r}) for i, r in jobs]
    path.write_bytes("\n".join(lines).encode("utf-8"))
    usable = [(i, r) for i, r in jobs if i.strip() and r.strip()]
    if len(usable) < len(jobs):
        with pytest.raises(VlmsamError):
            read_requests(path)
        return
    import unicodedata

    assert read_requests(path) == [(unicodedata.normalize("NFC", i).strip(), unicodedata.normalize("NFC", r).strip())
                                   for i, r in jobs]
