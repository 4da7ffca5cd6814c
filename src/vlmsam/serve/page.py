"""The web page: a Gradio Blocks client of the same request queue, mounted at ``/`` on the API's app.

The page is a client of the API, not a second door: its calls pass the same gate (the API key, or the
cookie ``/?api_key=KEY`` sets), its image goes through the same checks (``decode_image``: bytes only,
size and pixel limits) and its requests through the same prompt checks and queue. Gradio hands the
function a file path; only files under this server's private upload folder (where Gradio stores what
a client uploaded) are read, so a client that names a server path (``{"path": "/etc/..."}``) is
refused. Upload or paste an image, type a request, pick a loaded segmenter, see the overlay, each
mask, the answer and the timings; a second request about the same picture reuses its encoding.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("vlmsam.serve")


def private_upload_folder() -> Path:
    """Gradio's upload folder for this server: a fresh private directory unless GRADIO_TEMP_DIR is set."""
    if not os.environ.get("GRADIO_TEMP_DIR"):
        os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="vlmsam-page-")
    return Path(os.environ["GRADIO_TEMP_DIR"]).resolve()


def uploaded_bytes(path, folder: Path, max_bytes: int) -> bytes:
    """The bytes of a file a client uploaded; any other path is refused (a ValueError saying so)."""
    from vlmsam.errors import VlmsamError
    from vlmsam.io.files import read_user_bytes

    if isinstance(path, dict):  # a FileData payload that reached us unprocessed
        path = path.get("path")
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError("upload an image first")
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(folder):
        raise ValueError("only uploaded images are accepted (a path on the server is refused)")
    try:
        return read_user_bytes(real, "an uploaded image", max_bytes=max_bytes + 1)
    except VlmsamError as exc:
        raise ValueError(str(exc)) from None


def mount_page(app, queue) -> None:
    try:
        import gradio as gr
    except ImportError:
        log.warning("gradio is not installed: serving the API only (pip install 'vlmsam[serve]' for the page)")
        return
    folder = private_upload_folder()
    app.state.upload_folder = folder  # the gate refuses page calls that name any other file
    answer = _answer(queue, folder, gr)
    names = list(queue.segmenters)
    with gr.Blocks(title="vlmsam") as page:
        gr.Markdown("## vlmsam: reasoning segmentation\nUpload an image, say what to segment.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="image", type="filepath", sources=["upload", "clipboard"], elem_id="input-image")
                request = gr.Textbox(label="request", placeholder="the shape left of the blue square", elem_id="request")
                segmenter = gr.Dropdown(names, value=names[0], label="segmenter", elem_id="segmenter")
                go = gr.Button("Segment", variant="primary", elem_id="segment-button")
            with gr.Column():
                overlay = gr.Image(label="overlay", type="numpy", elem_id="overlay")
                masks = gr.AnnotatedImage(label="masks", elem_id="masks")
                text = gr.Textbox(label="answer", elem_id="answer")
                timings = gr.JSON(label="timings", elem_id="timings")
                steps = gr.Gallery(label="agent steps (the agent design: each turn's call, its outcome, what it saw)",
                                   elem_id="steps", columns=4, height="auto")
        example = Path(__file__).with_name("example.jpg")  # shipped in the package: the page shows it installed too
        if example.is_file():
            gr.Examples([[str(example), "Find the one shape that is below the orange hexagon."]], inputs=[image, request])
        go.click(answer, inputs=[image, request, segmenter], outputs=[overlay, masks, text, timings, steps], api_name="answer")
        request.submit(answer, inputs=[image, request, segmenter], outputs=[overlay, masks, text, timings, steps], api_name=False)
    gr.mount_gradio_app(app, page, path="/")


def _answer(queue, folder: Path, gr):
    """The page's one function: the API's checks, queue and limits, in Gradio's terms (gr.Error)."""
    import time

    import numpy as np

    from vlmsam.io.images import image_key
    from vlmsam.errors import first_line
    from vlmsam.io.writer import overlay_all
    from vlmsam.serve.queue import ApiError, check_prompt, decode_image

    cache: dict[tuple[str, str], object] = {}  # (segmenter, image key) -> handle, the page's own few images

    async def answer(image, request, segmenter):
        try:
            if image is None:
                raise ApiError(422, "upload or paste an image first")
            prompt = check_prompt(request, queue.options)
            name, _ = queue.segmenter(segmenter)
            try:
                data = uploaded_bytes(image, folder, queue.options.max_upload_bytes)
            except ValueError as exc:
                raise ApiError(422, str(exc)) from None
            pil = decode_image(data, queue.options)
            t0 = time.perf_counter()
            key = (name, image_key(pil))
            cached = key in cache
            if not cached:
                if len(cache) > 8:
                    cache.pop(next(iter(cache)))
                cache[key] = await queue.encode(name, pil)
            encode_s = 0.0 if cached else time.perf_counter() - t0
            result = await queue.submit(name, cache[key], prompt)
        except ApiError as exc:
            raise gr.Error(exc.message) from None
        except Exception as exc:  # shown on the page, never a traceback
            log.exception("page request failed")
            raise gr.Error(first_line(exc)) from None
        overlay = overlay_all(np.asarray(pil), result.masks)
        masks = (np.asarray(pil), [(m, result.labels[i] or f"mask {i + 1}") for i, m in enumerate(result.masks)])
        timings = {"encode_image": "0 (cached)" if cached else f"{encode_s:.3f} s",
                   **{k: f"{v:.3f} s" for k, v in result.timings.items()}}
        return overlay, masks, result.text, timings, step_list(result)

    return answer


def step_list(result) -> list:
    """An agent's steps as (picture, caption) pairs for the page's gallery; a step without a picture is
    shown on a blank tile (the list is every turn, in order). Other designs have none."""
    from PIL import Image

    out = []
    for step in result.info.get("trace", []):
        picture = result.extra_images.get(step.get("picture") or "") or Image.new("RGB", (64, 64), (240, 240, 240))
        call = f"{step['tool']}({', '.join(f'{k}={v}' for k, v in step['parameters'].items())})" if step["tool"] else "malformed call"
        out.append((picture, f"turn {step['turn']}: {call} -> {step['outcome']}"[:300]))
    return out
