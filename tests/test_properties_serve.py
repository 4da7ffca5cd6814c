"""Property-based tests (hypothesis) of the server's input boundaries, through the real app in-process
(FastAPI's TestClient over the bundled default): image bytes and shapes, request text and JSON bodies.
A new instance of a known class of bad input is caught by construction: every answer is 200 or a 4xx in
the error model, never a 5xx."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlmsam.engine.contract import check_request
from vlmsam.errors import PromptError
from vlmsam.serve.queue import ApiError, ServeOptions, decode_image

EXAMPLES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])
ANY_CHAR = st.characters(codec=None, categories=None)  # surrogates and control characters included


@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    from vlmsam.segmenter import load_segmenter
    from vlmsam.serve.app import create_app

    app = create_app({"seg_token": load_segmenter().engine}, ServeOptions(max_pixels=2_000_000), page=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@EXAMPLES
@given(st.text(ANY_CHAR, max_size=300))
def test_request_text_is_clean_or_refused(text):
    try:
        out = check_request(text)
    except PromptError:
        return
    out.encode("utf-8")  # valid Unicode by construction
    assert out and out == out.strip() and not any(c < " " and c not in "\t\n\r" for c in out)


@EXAMPLES
@given(st.binary(max_size=2048))
def test_image_bytes_decode_or_refuse(data):
    try:
        image = decode_image(data, ServeOptions())
    except ApiError as exc:
        assert exc.status in (413, 422)
        return
    assert image.mode == "RGB" and image.width > 0 and image.height > 0


@EXAMPLES
@given(st.integers(1, 4000), st.integers(1, 4000), st.sampled_from(["PNG", "BMP", "GIF"]), st.integers(0, 40))
def test_image_shapes_decode_or_refuse(height, width, fmt, cut):
    if height * width > 3_000_000:
        height = max(1, 3_000_000 // width)
    data = _png(np.full((height, width, 3), 90, np.uint8), fmt)
    data = data[: max(1, len(data) - cut)] if cut % 3 == 0 and cut else data  # some truncated
    try:
        image = decode_image(data, ServeOptions(max_pixels=2_000_000))
    except ApiError as exc:
        assert exc.status in (413, 422)
        return
    assert image.size == (width, height) and max(width, height) <= 200 * min(width, height)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(ANY_CHAR, max_size=40),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                    max_leaves=20)
FIELDS = st.fixed_dictionaries({}, optional={
    "prompt": st.text(ANY_CHAR, max_size=60) | JSON, "segmenter": st.sampled_from(["seg_token", "", "nope"]) | JSON,
    "image_id": st.text(ANY_CHAR, max_size=30) | JSON, "overlay": st.booleans() | JSON, "image": st.just("SMALL") | JSON})


def _error_model(r) -> bool:
    body = r.json()
    return set(body) == {"error", "request_id"} and isinstance(body["error"], str) and body["error"]


@EXAMPLES
@given(FIELDS)
def test_json_bodies_are_answered_or_refused(client, fields):
    import base64

    if fields.get("image") == "SMALL":
        fields["image"] = base64.b64encode(_png(np.zeros((12, 16, 3), np.uint8))).decode()
    raw = json.dumps(fields, ensure_ascii=True).encode()  # lone surrogates travel as \udcxx escapes
    for endpoint in ("/v1/segment", "/v1/images"):
        r = client.post(endpoint, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 200 or (400 <= r.status_code < 500 and _error_model(r)), (endpoint, r.status_code, r.text)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300) | st.text(ANY_CHAR, max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_raw_bodies_never_500(client, body):
    for kind in ("application/json", "multipart/form-data; boundary=xyz", "text/plain"):
        r = client.post("/v1/segment", content=body, headers={"content-type": kind})
        assert 400 <= r.status_code < 500 and _error_model(r), (kind, r.status_code, r.text)
