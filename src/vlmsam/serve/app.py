"""``vlmsam serve``'s HTTP API: decode a request, call the engine, encode the answer (FastAPI).

Models are loaded once, before the app starts; a request names a loaded segmenter and never causes a
rebuild. Images arrive only as bytes (multipart or base64 JSON), never as a path or URL the server
would open. ``POST /v1/images`` encodes an image once and keeps the handle in a bounded LRU;
requests about the same image that wait in the queue together are answered by one ``segment_many``.
A bounded queue answers 503 with ``Retry-After`` when full; every error is a JSON body with a
request id that is also in the server's log, never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from fastapi import Request  # module level: the route annotations below are resolved here
from starlette.requests import ClientDisconnect

log = logging.getLogger("vlmsam.serve")


@dataclass
class ServeOptions:
    concurrency: int = 1  # model calls at once (one CPU-bound model: 1)
    max_queue: int = 16  # requests waiting beyond those running; more -> 503
    cache_size: int = 32  # encoded images kept for image_id requests
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000
    max_prompt_chars: int = 2000
    api_key: str | None = None


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def decode_image(data: bytes, options: ServeOptions):
    """Bytes -> an upright RGB PIL image, with the server's size limits (413) and a clear 422 otherwise."""
    from PIL import Image

    from vlmsam.errors import ImageLoadError, first_line
    from vlmsam.io.images import load_image

    if not data:
        raise ApiError(422, "the image is empty (0 bytes)")
    if len(data) > options.max_upload_bytes:
        raise ApiError(413, f"the image is {len(data):,} bytes; at most {options.max_upload_bytes:,} are accepted")
    try:
        with Image.open(io.BytesIO(data)) as probe:  # the header alone: refuse huge images before decoding them
            w, h = probe.size
    except Image.DecompressionBombError:
        raise ApiError(413, f"the image has too many pixels (at most {options.max_pixels:,} are accepted)") from None
    except Exception:
        raise ApiError(422, "the upload is not an image (or a format Pillow cannot read)") from None
    if w * h > options.max_pixels:
        raise ApiError(413, f"the image is {w}x{h} = {w * h:,} pixels; at most {options.max_pixels:,} are accepted")
    try:
        return load_image(bytes(data))  # bytes only: the server never opens a path or URL
    except ImageLoadError as exc:
        raise ApiError(422, f"the image cannot be decoded ({str(exc).split(': ', 1)[-1]})") from None
    except Exception:
        raise ApiError(422, "the image cannot be decoded (truncated or corrupt)") from None


def encode_result(result, image_size, overlay_of=None) -> dict:
    from vlmsam.io.writer import mask_to_rle

    out = {"answer": result.text, "num_masks": result.num_masks, "image_size": list(image_size),
           "masks": [mask_to_rle(m) for m in result.masks], "boxes_xyxy": np.round(result.boxes, 2).tolist(),
           "scores": [round(float(s), 6) for s in result.scores], "labels": list(result.labels),
           "timings": {k: round(float(v), 6) for k, v in result.timings.items()},
           "info": {k: v for k, v in result.info.items() if isinstance(v, (str, int, float, list, dict))}}
    if overlay_of is not None:
        from vlmsam.io.writer import overlay_all

        buffer = io.BytesIO()
        from PIL import Image

        Image.fromarray(overlay_all(np.asarray(overlay_of), result.masks)).save(buffer, format="PNG")
        out["overlay_png_base64"] = base64.b64encode(buffer.getvalue()).decode()
    return out


@dataclass
class Job:
    segmenter: str
    encoded: object
    request: str
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class Engine:
    """The loaded segmenters, the image cache and the batching queue (one per server)."""

    def __init__(self, segmenters: dict, options: ServeOptions):
        self.segmenters = segmenters
        self.options = options
        self.images: OrderedDict[str, tuple[str, object, object]] = OrderedDict()  # image_id -> (segmenter, handle, image)
        self.queue: asyncio.Queue | None = None
        self.workers: list[asyncio.Task] = []
        self.batched = 0  # requests answered in a batch with others (for the tests and /v1/models)

    async def start(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.options.max_queue)
        self.workers = [asyncio.create_task(self._worker()) for _ in range(self.options.concurrency)]

    async def stop(self) -> None:
        for w in self.workers:
            w.cancel()

    def segmenter(self, name: str | None):
        if name is not None and not isinstance(name, str):
            raise ApiError(422, f"'segmenter' must be a name (one of {', '.join(self.segmenters)}), not {type(name).__name__}")
        name = name or next(iter(self.segmenters))
        if name not in self.segmenters:
            raise ApiError(404, f"unknown segmenter '{name}'; loaded: {', '.join(self.segmenters)}")
        return name, self.segmenters[name]

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def encode(self, name: str, image) -> object:
        _, seg = self.segmenter(name)
        return await self.run(seg.encode, image)

    def remember(self, name: str, encoded, image) -> str:
        image_id = f"{name}-{encoded.key[:16]}-{secrets.token_hex(4)}"
        self.images[image_id] = (name, encoded, image)
        while len(self.images) > self.options.cache_size:
            self.images.popitem(last=False)
        return image_id

    def recall(self, image_id: str):
        if image_id not in self.images:
            raise ApiError(404, f"unknown image_id '{image_id}' (expired or never uploaded; POST /v1/images again)")
        self.images.move_to_end(image_id)
        return self.images[image_id]

    async def segment(self, name: str, encoded, request: str):
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(Job(name, encoded, request, future))
        except asyncio.QueueFull:
            raise ApiError(503, "the server is busy: the request queue is full; retry shortly", {"Retry-After": "1"}) from None
        return await future

    async def _worker(self) -> None:
        while True:
            job = await self.queue.get()
            batch = [job]
            # Requests about the same encoded image that are already waiting join this one.
            waiting = []
            while not self.queue.empty():
                other = self.queue.get_nowait()
                (batch if other.segmenter == job.segmenter and other.encoded is job.encoded else waiting).append(other)
            for other in waiting:
                self.queue.put_nowait(other)
            seg = self.segmenters[job.segmenter]
            try:
                results = await self.run(seg.segment_many, job.encoded, [j.request for j in batch])
                if len(batch) > 1:
                    self.batched += len(batch)
                for j, r in zip(batch, results):
                    if not j.future.done():
                        j.future.set_result(r)
            except Exception as exc:  # handed to each waiting request; the handler turns it into JSON
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(exc)


def create_app(segmenters: dict, options: ServeOptions | None = None, *, page: bool = True):
    """The FastAPI app over loaded segmenters (``{name: engine segmenter}``)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from vlmsam.errors import PromptError, VlmsamError, first_line

    options = options or ServeOptions()
    engine = Engine(segmenters, options)

    async def lifespan(app):
        await engine.start()
        yield
        await engine.stop()

    app = FastAPI(title="vlmsam", version=__import__("vlmsam").__version__, lifespan=lifespan,
                  description="Reasoning segmentation: an image and a request in, masks (COCO RLE) and the answer out.")
    app.state.engine = engine

    @app.middleware("http")
    async def guard(request: Request, call_next):
        request_id = uuid.uuid4().hex[:12]
        request.state.request_id = request_id
        if options.api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not given or not secrets.compare_digest(given, options.api_key):
                return JSONResponse({"error": "missing or wrong API key (X-API-Key or Authorization: Bearer)",
                                     "request_id": request_id}, status_code=401)
        try:
            response = await call_next(request)
        except ClientDisconnect:  # the client went away mid-upload: nothing to answer, nothing broken
            log.info("request %s: the client disconnected before sending its body", request_id)
            return JSONResponse({"error": "the client disconnected", "request_id": request_id}, status_code=400)
        except Exception:  # a bug: logged with its id, never shown to the client
            log.exception("request %s failed", request_id)
            return JSONResponse({"error": "internal error; the server log has the details", "request_id": request_id},
                                status_code=500)
        response.headers["X-Request-Id"] = request_id
        return response

    def error(request: Request, status: int, message: str, headers: dict | None = None):
        request_id = getattr(request.state, "request_id", "-")
        log.warning("request %s: %d %s", request_id, status, message)
        return JSONResponse({"error": message, "request_id": request_id}, status_code=status, headers=headers or {})

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error(request, exc.status, exc.message, exc.headers)

    @app.exception_handler(VlmsamError)
    async def user_error(request: Request, exc: VlmsamError):
        return error(request, 422, first_line(exc))

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return error(request, 422, f"invalid request: {where or 'body'}: {first.get('msg', 'malformed')}")

    def check_prompt(prompt) -> str:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ApiError(422, "the prompt is empty: say what to segment, e.g. \"the red circle\"")
        if len(prompt) > options.max_prompt_chars:
            raise ApiError(422 if len(prompt) < 10 * options.max_prompt_chars else 413,
                           f"the prompt has {len(prompt):,} characters; at most {options.max_prompt_chars:,} are accepted")
        return prompt

    async def read_payload(request: Request) -> dict:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            body = await request.body()
            if len(body) > options.max_upload_bytes * 4 // 3 + 65536:
                raise ApiError(413, "the request body is too large")
            import json

            try:
                payload = json.loads(body)
            except ValueError:
                raise ApiError(422, "malformed JSON body") from None
            if not isinstance(payload, dict):
                raise ApiError(422, "the JSON body must be an object")
            if "image" in payload:
                if not isinstance(payload["image"], str):
                    raise ApiError(422, "'image' must be a base64 string")
                try:
                    payload["image_bytes"] = base64.b64decode(payload.pop("image"), validate=True)
                except (binascii.Error, ValueError):
                    raise ApiError(422, "'image' is not valid base64") from None
            return payload
        if kind == "multipart/form-data":
            try:
                form = await request.form(max_part_size=options.max_upload_bytes + 1)
            except Exception as exc:
                message = str(exc)
                if "exceed" in message.lower() or "too large" in message.lower():
                    raise ApiError(413, f"the upload is larger than {options.max_upload_bytes:,} bytes") from None
                raise ApiError(422, "malformed multipart body") from None
            payload = {k: v for k, v in form.items() if k != "image"}
            upload = form.get("image")
            if upload is not None:
                if isinstance(upload, str):
                    raise ApiError(422, "'image' must be a file part")
                payload["image_bytes"] = await upload.read()
            return payload
        raise ApiError(415, "send multipart/form-data (image file + prompt) or application/json")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        out = []
        for name, seg in engine.segmenters.items():
            device = getattr(seg, "device", None)
            out.append({"name": name, "model": getattr(seg, "label", name), "device": str(device) if device is not None else "cpu"})
        return {"segmenters": out, "cached_images": len(engine.images), "batched_requests": engine.batched}

    @app.post("/v1/images")
    async def images(request: Request):
        payload = await read_payload(request)
        if "image_bytes" not in payload:
            raise ApiError(422, "send the image (a file part 'image', or base64 'image' in JSON)")
        name, _ = engine.segmenter(payload.get("segmenter"))
        image = decode_image(payload["image_bytes"], options)
        t0 = time.perf_counter()
        encoded = await engine.encode(name, image)
        image_id = engine.remember(name, encoded, image)
        return {"image_id": image_id, "segmenter": name, "image_size": [image.height, image.width],
                "encode_seconds": round(time.perf_counter() - t0, 6), "request_id": request.state.request_id}

    @app.post("/v1/segment")
    async def segment(request: Request):
        payload = await read_payload(request)
        prompt = check_prompt(payload.get("prompt"))
        overlay = str(request.query_params.get("overlay", payload.get("overlay", "0"))).lower() in ("1", "true", "yes")
        t0 = time.perf_counter()
        if payload.get("image_id"):
            name, encoded, image = engine.recall(str(payload["image_id"]))
            if payload.get("segmenter") not in (None, "", name):
                raise ApiError(422, f"image_id {payload['image_id']} was encoded by '{name}', not '{payload['segmenter']}'")
            encode_s = 0.0
        elif "image_bytes" in payload:
            name, _ = engine.segmenter(payload.get("segmenter"))
            image = decode_image(payload["image_bytes"], options)
            encoded = await engine.encode(name, image)
            encode_s = time.perf_counter() - t0
        else:
            raise ApiError(422, "send an image (file part 'image' or base64 'image') or an image_id from POST /v1/images")
        try:
            result = await engine.segment(name, encoded, prompt)
        except PromptError as exc:
            raise ApiError(422, str(exc)) from None
        body = encode_result(result, encoded.size, image if overlay else None)
        body["timings"] = {"encode_image": round(encode_s, 6), **body["timings"],
                           "total": round(time.perf_counter() - t0, 6)}
        body.update(segmenter=name, request_id=request.state.request_id)
        return body

    if page:
        from vlmsam.serve.page import mount_page

        mount_page(app, engine)
    return app
