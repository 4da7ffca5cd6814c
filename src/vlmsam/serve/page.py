"""The web page: a Gradio Blocks client of the same engine, mounted at ``/`` on the API's app.

Upload or paste an image, type a request, pick a loaded segmenter, see the overlay, each mask, the
answer and the timings. The page encodes an image once: a second request about the same picture
reuses its handle (the encode time shows as 0, cached).
"""

from __future__ import annotations

from vlmsam.errors import first_line

import logging

log = logging.getLogger("vlmsam.serve")


def mount_page(app, engine) -> None:
    try:
        import gradio as gr
    except ImportError:
        log.warning("gradio is not installed: serving the API only (pip install 'vlmsam[serve]' for the page)")
        return
    import time

    import numpy as np

    from vlmsam.engine.contract import image_key
    from vlmsam.io.images import load_image
    from vlmsam.io.writer import overlay_all

    cache: dict[tuple[str, str], object] = {}  # (segmenter, image key) -> handle, the page's own few images

    def answer(image, request, segmenter):
        if image is None:
            raise gr.Error("upload or paste an image first")
        if not request or not request.strip():
            raise gr.Error("type a request, e.g. \"the red circle\"")
        pil = load_image(np.asarray(image))
        seg = engine.segmenters[segmenter]
        t0 = time.perf_counter()
        key = (segmenter, image_key(pil))
        cached = key in cache
        if not cached:
            if len(cache) > 8:
                cache.pop(next(iter(cache)))
            cache[key] = seg.encode(pil)
        encode_s = 0.0 if cached else time.perf_counter() - t0
        try:
            result = seg.segment(cache[key], request)
        except Exception as exc:  # shown on the page, never a traceback
            raise gr.Error(first_line(exc)) from None
        overlay = overlay_all(np.asarray(pil), result.masks)
        masks = [(np.asarray(pil), [(m, result.labels[i] or f"mask {i + 1}") for i, m in enumerate(result.masks)])]
        timings = {"encode_image": "0 (cached)" if cached else f"{encode_s:.3f} s",
                   **{k: f"{v:.3f} s" for k, v in result.timings.items()}}
        return overlay, masks[0], result.text, timings

    names = list(engine.segmenters)
    with gr.Blocks(title="vlmsam") as page:
        gr.Markdown("## vlmsam: reasoning segmentation\nUpload an image, say what to segment.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="image", type="numpy", elem_id="input-image")
                request = gr.Textbox(label="request", placeholder="the shape left of the blue square", elem_id="request")
                segmenter = gr.Dropdown(names, value=names[0], label="segmenter", elem_id="segmenter")
                go = gr.Button("Segment", variant="primary", elem_id="segment-button")
            with gr.Column():
                overlay = gr.Image(label="overlay", type="numpy", elem_id="overlay")
                masks = gr.AnnotatedImage(label="masks", elem_id="masks")
                text = gr.Textbox(label="answer", elem_id="answer")
                timings = gr.JSON(label="timings", elem_id="timings")
        from vlmsam.engine.registry import DEFAULT_MODEL_DIR

        example = DEFAULT_MODEL_DIR.parent.parent.parent.parent / "examples" / "scene.jpg"
        if example.is_file():
            gr.Examples([[str(example), "Find the one shape that is below the orange hexagon."]], inputs=[image, request])
        go.click(answer, inputs=[image, request, segmenter], outputs=[overlay, masks, text, timings])
        request.submit(answer, inputs=[image, request, segmenter], outputs=[overlay, masks, text, timings])
    gr.mount_gradio_app(app, page, path="/")
