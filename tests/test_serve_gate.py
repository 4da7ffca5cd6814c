"""The server's one gate, as a hostile client meets it: the page's own API (Gradio's protocol, driven
by gradio_client) needs the key and reads no server file; every route, known or not, answers in the
error model; one client's bad request never fails another's batched request; SIGTERM answers the
requests in flight."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time

import httpx
import pytest

from tests.test_serve import EXAMPLE, REQUEST, start

KEY = "k3y-for-tests"


def _start(*extra):
    return start(*extra, page="--no-page" not in extra, env={"GRADIO_ANALYTICS_ENABLED": "False"})


@pytest.fixture(scope="module")
def keyed():
    proc, url = _start("--api-key", KEY)
    yield proc, url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert "Traceback" not in proc.stderr.read()


def _is_error_model(r, status):
    body = r.json()
    return r.status_code == status and set(body) == {"error", "request_id"} and r.headers["x-request-id"] == body["request_id"]


def test_the_page_api_needs_the_key(keyed):
    gradio_client = pytest.importorskip("gradio_client")
    _, url = keyed
    r = httpx.post(url + "/gradio_api/call/answer", json={"data": [None, "x", "seg_token"]})
    assert _is_error_model(r, 401)
    with pytest.raises(gradio_client.exceptions.AuthenticationError):  # it cannot even read the page's config (401)
        gradio_client.Client(url + "/", verbose=False, download_files=False)
    client = gradio_client.Client(url + "/", verbose=False, download_files=False, headers={"X-API-Key": KEY})
    overlay, masks, answer, timings, steps = client.predict(gradio_client.handle_file(str(EXAMPLE)), REQUEST, "seg_token",
                                                            api_name="/answer")
    assert isinstance(answer, str) and "encode_image" in timings and steps == []  # agent steps: only the agent has them


@pytest.mark.parametrize("named", [
    {"path": "/usr/share/pixmaps/debian-logo.png", "meta": {"_type": "gradio.FileData"}},
    {"path": str(EXAMPLE), "meta": {"_type": "gradio.FileData"}},
    {"path": "/tmp/../etc/hostname", "meta": {"_type": "gradio.FileData"}},
    {"url": "http://127.0.0.1:1/x.png", "path": None, "meta": {"_type": "gradio.FileData"}},
])
def test_the_page_reads_no_server_file(keyed, named):
    """Gradio's protocol as a hostile client speaks it (gradio_client itself uploads a local path first,
    so the raw calls are what name a file on the server)."""
    _, url = keyed
    for route in ("/gradio_api/call/answer", "/gradio_api/queue/join"):
        r = httpx.post(url + route, headers={"X-API-Key": KEY},
                       json={"data": [named, REQUEST, "seg_token"], "fn_index": 0, "session_hash": "abc"})
        assert _is_error_model(r, 422), (route, r.status_code, r.text)
        assert "upload" in r.json()["error"]


def test_browser_login_sets_a_cookie(keyed):
    _, url = keyed
    assert _is_error_model(httpx.get(url + "/"), 401)
    assert _is_error_model(httpx.get(url + "/?api_key=wrong"), 401)
    with httpx.Client(base_url=url, follow_redirects=True) as browser:
        r = browser.get("/?api_key=" + KEY)
        assert r.status_code == 200 and "gradio" in r.text.lower()
        assert browser.get("/v1/models").status_code == 200  # the cookie is the key


def test_every_route_answers_in_the_error_model(keyed):
    _, url = keyed
    auth = {"X-API-Key": KEY}
    assert _is_error_model(httpx.get(url + "/no/such/route", headers=auth), 404)
    assert _is_error_model(httpx.get(url + "/no/such/route"), 401)
    r = httpx.request("TRACE", url + "/v1/segment", headers=auth)
    assert _is_error_model(r, 405) and r.headers["allow"] == "POST"
    for method in ("PUT", "DELETE", "PATCH"):
        assert _is_error_model(httpx.request(method, url + "/v1/models", headers=auth), 405)
    assert _is_error_model(httpx.get(url + "/v1/models", headers={"X-API-Key": "k\u00e9y".encode("utf-8")}), 401)  # non-ASCII key
    port = int(url.rsplit(":", 1)[1])
    for bad in (b"abc", b"-5", b"1, 2"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode()
                         + b"\r\nContent-Length: " + bad + b"\r\n\r\n{}")
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head, raw[:300]
        assert set(json.loads(body)) == {"error", "request_id"}


def test_undecodable_text_is_a_422(keyed):
    _, url = keyed
    auth = {"X-API-Key": KEY, "content-type": "application/json"}
    image_id = httpx.post(url + "/v1/images", headers={"X-API-Key": KEY},
                          files={"image": ("s.jpg", EXAMPLE.read_bytes(), "image/jpeg")}, timeout=60).json()["image_id"]
    for field in ("prompt", "image_id", "segmenter"):
        body = {"image_id": image_id, "prompt": REQUEST, field: "\\udcff"}
        raw = json.dumps(body).replace("\\\\udcff", "\\udcff").encode()  # a lone surrogate, as JSON allows
        r = httpx.post(url + "/v1/segment", headers=auth, content=raw, timeout=60)
        assert _is_error_model(r, 422), (field, r.text)
    r = httpx.post(url + "/v1/segment", headers=auth, content=b"[" * 100_000, timeout=60)
    assert _is_error_model(r, 422) and "nested" in r.json()["error"]


def test_one_bad_request_does_not_fail_the_others(keyed):
    """12 concurrent requests on one image_id, one with a lone surrogate: only that one fails."""
    _, url = keyed
    auth = {"X-API-Key": KEY, "content-type": "application/json"}
    image_id = httpx.post(url + "/v1/images", headers={"X-API-Key": KEY},
                          files={"image": ("s.jpg", EXAMPLE.read_bytes(), "image/jpeg")}, timeout=60).json()["image_id"]
    codes = [None] * 12

    def ask(k):
        prompt = "\\udcff" if k == 5 else REQUEST
        raw = json.dumps({"image_id": image_id, "prompt": prompt}).replace("\\\\udcff", "\\udcff").encode()
        codes[k] = httpx.post(url + "/v1/segment", headers=auth, content=raw, timeout=120).status_code

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes[5] == 422 and [c for k, c in enumerate(codes) if k != 5] == [200] * 11 or 503 in codes, codes


class _FailsOn:
    """A segmenter that answers like the bundled one but breaks on one request (inside the model call),
    standing in for an input the checks cannot foresee."""

    def __init__(self, real, poison: str):
        self.real, self.poison = real, poison

    def encode(self, image):
        return self.real.encode(image)

    def segment_many(self, encoded, requests):
        if self.poison in requests:
            raise RuntimeError("the model broke on this request")
        return self.real.segment_many(encoded, requests)


def test_a_failure_inside_a_batch_is_isolated():
    from vlmsam.segmenter import load_segmenter
    from vlmsam.serve.queue import RequestQueue, ServeOptions

    real = load_segmenter().engine
    queue = RequestQueue({"seg_token": _FailsOn(real, "poison")}, ServeOptions(max_queue=32))

    async def scenario():
        await queue.start()
        encoded = await queue.encode("seg_token", EXAMPLE)
        prompts = [REQUEST] * 5 + ["poison"] + [REQUEST] * 5
        outcomes = await asyncio.gather(*(queue.submit("seg_token", encoded, p) for p in prompts), return_exceptions=True)
        await queue.stop()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert isinstance(outcomes[5], RuntimeError)
    good = [o for k, o in enumerate(outcomes) if k != 5]
    assert all(not isinstance(o, BaseException) for o in good)
    assert len({o.text for o in good}) == 1


def test_sigterm_answers_the_requests_in_flight():
    proc, url = start("--max-queue", "16")
    results = []

    def ask():
        r = httpx.post(url + "/v1/segment", files={"image": ("s.jpg", EXAMPLE.read_bytes(), "image/jpeg")},
                       data={"prompt": REQUEST}, timeout=120)
        results.append(r.status_code)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # the requests are in: some running, some queued
    proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=120)
    assert proc.wait(timeout=60) == 0
    assert results == [200] * 6, results
    with pytest.raises(httpx.HTTPError):  # stopped taking requests
        httpx.get(url + "/healthz", timeout=2)
    assert "Traceback" not in proc.stderr.read()
