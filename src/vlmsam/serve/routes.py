"""The API's routes: decode a request, ask the request queue, encode the answer."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
from fastapi import Request  # module level: the route annotations below are resolved here

from vlmsam.serve import schema
from vlmsam.serve.payload import read_flag, read_payload
from vlmsam.serve.queue import ApiError, RequestQueue, ServeOptions, check_prompt, check_text, decode_image


def _png(picture) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def encode_result(result, image_size, overlay_of=None, trace: bool = False) -> dict:
    """The JSON answer; ``trace``: an agent's steps and their pictures too (a design without one has none)."""
    from vlmsam.io.writer import mask_to_rle

    out = {"answer": result.text, "num_masks": result.num_masks, "image_size": list(image_size),
           "masks": [mask_to_rle(m) for m in result.masks], "boxes_xyxy": np.round(result.boxes, 2).tolist(),
           "scores": [round(float(s), 6) for s in result.scores], "labels": list(result.labels),
           "timings": {k: round(float(v), 6) for k, v in result.timings.items()},
           "info": {k: v for k, v in result.info.items() if k != "trace" and isinstance(v, (str, int, float, list, dict))}}
    if trace and "trace" in result.info:
        out["trace"] = {"steps": result.info["trace"], "pictures": {n: _png(p) for n, p in result.extra_images.items()}}
    if overlay_of is not None:
        from PIL import Image

        from vlmsam.io.writer import overlay_all

        out["overlay_png_base64"] = _png(Image.fromarray(overlay_all(np.asarray(overlay_of), result.masks)))
    return out


def add_routes(app, queue: RequestQueue, options: ServeOptions) -> None:
    from vlmsam.errors import PromptError

    names = list(queue.segmenters)
    common = schema.error_responses(400, 401, 404, 405, 413, 415, 422, 502, 503)

    @app.get("/healthz", response_model=schema.Health, responses=schema.error_responses(404, 405))
    async def healthz():
        return {"status": "ok"}

    @app.get("/v1/models", response_model=schema.ModelsAnswer, responses=schema.error_responses(401, 404, 405))
    async def models():
        out = []
        for name, seg in queue.segmenters.items():
            out.append({"name": name, "model": seg.label, "device": str(seg.device)})
        return {"segmenters": out, "cached_images": len(queue.images), "batched_requests": queue.batched}

    @app.post("/v1/images", response_model=schema.ImageAnswer, responses=common,
              openapi_extra=schema.request_body(names, options.max_prompt_chars, options.max_upload_bytes, segment=False))
    async def images(request: Request):
        payload = await read_payload(request, options)
        if "image_bytes" not in payload:
            raise ApiError(422, "send the image (a file part 'image', or base64 'image' in JSON)")
        name, _ = queue.segmenter(payload.get("segmenter"))
        image = decode_image(payload["image_bytes"], options)
        t0 = time.perf_counter()
        encoded = await queue.encode(name, image)
        image_id = queue.remember(name, encoded, image)
        return {"image_id": image_id, "segmenter": name, "image_size": [image.height, image.width],
                "encode_seconds": round(time.perf_counter() - t0, 6), "request_id": request.state.request_id}

    @app.post("/v1/segment", response_model=schema.SegmentAnswer, response_model_exclude_none=True, responses=common,
              openapi_extra=schema.request_body(names, options.max_prompt_chars, options.max_upload_bytes, segment=True))
    async def segment(request: Request):
        payload = await read_payload(request, options)
        prompt = check_prompt(payload.get("prompt"), options)
        overlay, trace = read_flag(payload.get("overlay")), read_flag(payload.get("trace"), name="trace")
        if "overlay" in request.query_params:
            overlay = read_flag(request.query_params["overlay"], ("1", "true", "yes", "0", "false", "no", ""))
        if "trace" in request.query_params:
            trace = read_flag(request.query_params["trace"], ("1", "true", "yes", "0", "false", "no", ""), name="trace")
        t0 = time.perf_counter()
        if "image_id" in payload and "image_bytes" in payload:
            raise ApiError(422, "send either an image or an image_id, not both")
        if "image_id" in payload:
            name, encoded, image = queue.recall(payload["image_id"])
            if payload.get("segmenter", name) != name:
                raise ApiError(422, f"this image_id was encoded by '{name}', not '{check_text(payload['segmenter'], 'segmenter', 200)}'")
            encode_s = 0.0
        elif "image_bytes" in payload:
            name, _ = queue.segmenter(payload.get("segmenter"))
            image = decode_image(payload["image_bytes"], options)
            encoded = await queue.encode(name, image)
            encode_s = time.perf_counter() - t0
        else:
            raise ApiError(422, "send an image (file part 'image' or base64 'image') or an image_id from POST /v1/images")
        try:
            result = await queue.submit(name, encoded, prompt)
        except PromptError as exc:
            raise ApiError(422, str(exc)) from None
        body = encode_result(result, encoded.size, image if overlay else None, trace=trace)
        body["timings"] = {"encode_image": round(encode_s, 6), **body["timings"], "total": round(time.perf_counter() - t0, 6)}
        body.update(segmenter=name, request_id=request.state.request_id)
        return body
