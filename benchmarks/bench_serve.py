"""The bundled model behind a real ``vlmsam serve``: 64 requests about 4 images.

Ours: each image uploaded once (``POST /v1/images``), then 16 concurrent clients send the 64 requests
by ``image_id`` (requests waiting together about one image are answered by one ``segment_many``).
Against: the same 64 requests sent one at a time, each with its image (encoded every time).

Prints p50 / p95 latency of both, then ``serve_speedup=<ratio>`` of requests per second (target >= 2).
"""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = ["the largest shape", "the shape left of the blue square", "all the triangles", "the red circle",
            "the smallest star", "Which shape is below the orange hexagon?", "the rightmost shape", "all the blue shapes",
            "the green hexagon", "the shape above the white triangle", "the topmost shape", "all the squares",
            "the yellow star", "Which shape is the odd one out?", "the leftmost shape", "the purple circle"]


def scenes() -> list[bytes]:
    from vlmsam.data.synth import make_scene

    import random

    rng, out = random.Random(11), []
    while len(out) < 4:
        scene = make_scene(rng)
        if scene is not None:
            out.append(scene["jpeg"])
    return out


def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "vlmsam", "serve", "--port", str(port), "--no-page", "--max-queue", "64", "--concurrency", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        images = scenes()
        jobs = [(k % 4, REQUESTS[k % 16]) for k in range(64)]
        client = httpx.Client(timeout=600)
        client.post(url + "/v1/segment", files={"image": ("w.jpg", images[0], "image/jpeg")}, data={"prompt": "warm up"})

        def timed(fn):
            t0 = time.perf_counter()
            r = fn()
            assert r.status_code == 200, r.text
            return time.perf_counter() - t0

        t0 = time.perf_counter()
        one_by_one = [timed(lambda i=i, q=q: client.post(url + "/v1/segment", files={"image": ("s.jpg", images[i], "image/jpeg")},
                                                         data={"prompt": q})) for i, q in jobs]
        sequential_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        ids = [client.post(url + "/v1/images", files={"image": ("s.jpg", im, "image/jpeg")}).json()["image_id"] for im in images]
        shared = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=16))  # keep-alive, as the sequential client
        with ThreadPoolExecutor(16) as pool:
            together = list(pool.map(lambda job: timed(lambda: shared.post(url + "/v1/segment", json={"image_id": ids[job[0]], "prompt": job[1]})),
                                     jobs))
        served_s = time.perf_counter() - t0
        p = lambda xs, q: float(np.percentile(xs, q))  # noqa: E731
        print(f"one at a time, image each time: {64 / sequential_s:.2f} req/s, p50 {p(one_by_one, 50):.2f}s p95 {p(one_by_one, 95):.2f}s; "
              f"16 clients by image_id: {64 / served_s:.2f} req/s, p50 {p(together, 50):.2f}s p95 {p(together, 95):.2f}s")
        print(f"serve_speedup={sequential_s / served_s:.2f}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
