"""The web page in a real browser (Debian's Chromium driven by playwright): upload a synthetic scene,
type a request, get an overlay that shows a mask; a second request does not re-encode the image."""

from __future__ import annotations

import io
import shutil
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.test_serve import EXAMPLE, REQUEST, free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "build" / "test-artifacts"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")


def test_page_in_a_browser(tmp_path):
    pytest.importorskip("gradio")
    playwright = pytest.importorskip("playwright.sync_api")
    import os
    import subprocess
    import sys

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vlmsam", "serve", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.3)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url + "/", wait_until="networkidle")
            page.locator("#input-image input[type=file]").set_input_files(str(EXAMPLE))
            page.locator("#request textarea").fill(REQUEST)
            page.locator("#segment-button").click()
            overlay = page.locator("#overlay img")
            overlay.wait_for(state="visible", timeout=120_000)
            page.wait_for_function("() => document.querySelector('#answer textarea') && document.querySelector('#answer textarea').value.length > 0",
                                   timeout=120_000)
            src = overlay.get_attribute("src")
            data = httpx.get(src if src.startswith("http") else url + src, timeout=30).content
            shown = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
            original = np.asarray(Image.open(EXAMPLE).convert("RGB")).astype(int)
            assert shown.shape == original.shape
            assert (np.abs(shown - original).sum(-1) > 30).mean() > 0.001  # a mask is drawn over the image
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)
            timings = page.locator("#timings").inner_text()
            page.locator("#segment-button").click()  # the same image again: no re-encoding
            page.wait_for_function("() => document.querySelector('#timings').innerText.includes('cached')", timeout=120_000)
            assert "cached" not in timings and "cached" in page.locator("#timings").inner_text()
            browser.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
