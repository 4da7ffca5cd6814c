"""``vlmsam serve``'s HTTP API: decode a request, call the engine, encode the answer (FastAPI).

Models are loaded once, before the app starts; a request names a loaded segmenter and never causes a
rebuild. Images arrive only as bytes (multipart or base64 JSON), never as a path or URL the server
would open. ``POST /v1/images`` encodes an image once and keeps the handle in a bounded LRU. A bounded
queue answers 503 with ``Retry-After`` when full. Every error, on every route (unknown ones too), is
the JSON error model with a request id that is also in the server's log, never a traceback. With an
API key, every route but ``/healthz`` and the API's documentation needs it, the web page included
(``/?api_key=KEY`` once in a browser sets a cookie).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import secrets
import time
import uuid

import numpy as np
from fastapi import Request  # module level: the route annotations below are resolved here
from starlette.requests import ClientDisconnect

from vlmsam.serve import schema
from vlmsam.serve.engine import ApiError, Engine, ServeOptions, check_prompt, check_text, decode_image

__all__ = ["ApiError", "Engine", "ServeOptions", "create_app", "decode_image", "encode_result"]

log = logging.getLogger("vlmsam.serve")
PUBLIC = ("/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
KEY_COOKIE = "vlmsam_api_key"
PAYLOAD_FIELDS = {"/v1/segment": {"image", "image_id", "prompt", "segmenter", "overlay"}, "/v1/images": {"image", "segmenter"}}


def encode_result(result, image_size, overlay_of=None) -> dict:
    from vlmsam.io.writer import mask_to_rle

    out = {"answer": result.text, "num_masks": result.num_masks, "image_size": list(image_size),
           "masks": [mask_to_rle(m) for m in result.masks], "boxes_xyxy": np.round(result.boxes, 2).tolist(),
           "scores": [round(float(s), 6) for s in result.scores], "labels": list(result.labels),
           "timings": {k: round(float(v), 6) for k, v in result.timings.items()},
           "info": {k: v for k, v in result.info.items() if isinstance(v, (str, int, float, list, dict))}}
    if overlay_of is not None:
        from PIL import Image

        from vlmsam.io.writer import overlay_all

        buffer = io.BytesIO()
        Image.fromarray(overlay_all(np.asarray(overlay_of), result.masks)).save(buffer, format="PNG")
        out["overlay_png_base64"] = base64.b64encode(buffer.getvalue()).decode()
    return out


def given_key(request: Request) -> bytes:
    """The key a request carries (header, bearer token or the page's cookie) as bytes: header values are
    latin-1, so a non-ASCII key compares as bytes instead of failing in ``compare_digest``."""
    text = (request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            or request.cookies.get(KEY_COOKIE, ""))
    return text.encode("latin-1", "replace")


def key_matches(given: bytes, key: str) -> bool:
    return bool(given) and secrets.compare_digest(given, key.encode("utf-8"))


def _error_response(request_id: str, status: int, message: str, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    log.warning("request %s: %d %s", request_id, status, message)
    return JSONResponse({"error": message, "request_id": request_id}, status_code=status,
                        headers={"X-Request-Id": request_id, **(headers or {})})


def _api_methods(app) -> dict[str, set[str]]:
    methods: dict[str, set[str]] = {}
    for route in app.routes:
        if getattr(route, "methods", None) and not route.path.startswith(("/docs", "/redoc")):
            methods.setdefault(route.path, set()).update(route.methods)
    return methods


def install_guard(app, options: ServeOptions) -> None:
    """One gate in front of every route, the API's and the page's: request id, key, methods, errors."""
    from fastapi.responses import RedirectResponse

    methods = {}

    @app.middleware("http")
    async def guard(request: Request, call_next):
        request_id = uuid.uuid4().hex[:12]
        request.state.request_id = request_id
        path = request.url.path
        if not methods:
            methods.update(_api_methods(app))
        if options.api_key and not path.startswith(PUBLIC):
            login = request.query_params.get("api_key") if path == "/" else None
            if login is not None and key_matches(login.encode("utf-8", "replace"), options.api_key):
                response = RedirectResponse("/", status_code=303)
                response.set_cookie(KEY_COOKIE, options.api_key, httponly=True, samesite="strict")
                return response
            if not key_matches(given_key(request), options.api_key):
                return _error_response(request_id, 401, "missing or wrong API key (X-API-Key or Authorization: Bearer; "
                                       "in a browser open /?api_key=KEY once)")
        if path.startswith("/gradio_api/") and request.method == "POST":
            refused = await _foreign_file(request, getattr(app.state, "upload_folder", None))
            if refused:
                return _error_response(request_id, 422, refused)
        if path in methods and request.method not in methods[path] | {"HEAD" if "GET" in methods[path] else ""}:
            allow = ", ".join(sorted(methods[path]))
            return _error_response(request_id, 405, f"{request.method} is not allowed on {path}; use {allow}", {"Allow": allow})
        try:
            response = await call_next(request)
        except ClientDisconnect:  # the client went away mid-upload: nothing to answer, nothing broken
            log.info("request %s: the client disconnected before sending its body", request_id)
            return _error_response(request_id, 400, "the client disconnected")
        except Exception:  # a bug: logged with its id, never shown to the client
            log.exception("request %s failed", request_id)
            return _error_response(request_id, 500, "internal error; the server log has the details")
        if response.status_code in (404, 405) and path not in methods:  # the page's router or no route at all
            return _error_response(request_id, response.status_code, f"no such route: {request.method} {path}")
        response.headers["X-Request-Id"] = request_id
        return response


async def _foreign_file(request: Request, folder) -> str | None:
    """Why a call to the page's API is refused: it names a file that was not uploaded to this server (a
    server path or a URL) or its body is not bounded JSON; None when it may go on."""
    import os

    from vlmsam.io.files import loads

    if not request.headers.get("content-type", "").startswith("application/json"):
        return None
    body = await request.body()
    try:
        data = loads(body, max_chars=4 * 2**20)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"malformed JSON body ({exc})"
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            where = value.get("path")
            if where is not None or value.get("url") is not None:
                # A file payload: its path must be an upload to this server (the browser also sends that
                # upload's own URL, which is never fetched); a URL alone is refused.
                if where is None:
                    return "images are accepted only as uploads, not as URLs"
                real = os.path.realpath(where) if isinstance(where, str) else ""
                if folder is None or not real.startswith(str(folder) + os.sep):
                    return "only uploaded images are accepted (a path on the server is refused)"
            stack.extend(value.values())
    return None


def install_handlers(app) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    from vlmsam.errors import VlmsamError, first_line

    def error(request: Request, status: int, message: str, headers: dict | None = None):
        return _error_response(getattr(request.state, "request_id", "-"), status, message, headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error(request, exc.status, exc.message, exc.headers)

    @app.exception_handler(VlmsamError)
    async def user_error(request: Request, exc: VlmsamError):
        return error(request, 422, first_line(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        return error(request, exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return error(request, 422, f"invalid request: {where or 'body'}: {first.get('msg', 'malformed')}")


async def _read_json(request: Request, options: ServeOptions) -> dict:
    from vlmsam.io.files import loads

    body = await request.body()
    if len(body) > options.max_upload_bytes * 4 // 3 + 65536:
        raise ApiError(413, "the request body is too large")
    try:
        payload = loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(422, f"malformed JSON body ({exc})" if body.strip() else "malformed JSON body (empty)") from None
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


async def _read_form(request: Request, options: ServeOptions) -> dict:
    try:
        form = await request.form(max_part_size=options.max_upload_bytes + 1)
    except ClientDisconnect:
        raise
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


async def read_payload(request: Request, options: ServeOptions) -> dict:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        payload = await _read_json(request, options)
    elif kind == "multipart/form-data":
        payload = await _read_form(request, options)
    else:
        raise ApiError(415, "send multipart/form-data (image file + prompt) or application/json")
    allowed = PAYLOAD_FIELDS[request.url.path]
    unknown = sorted(k for k in payload if k not in allowed and k != "image_bytes")
    if unknown:
        name = unknown[0] if isinstance(unknown[0], str) and unknown[0].isprintable() else repr(unknown[0])
        raise ApiError(422, f"unknown field '{name[:60]}'; accepted: {', '.join(sorted(allowed))}")
    for key in ("segmenter", "image_id", "prompt", "overlay"):  # present means given: no nulls, no blanks
        if key in payload and (payload[key] is None or (key in ("segmenter", "image_id") and payload[key] == "")):
            raise ApiError(422, f"'{key}' is {'null' if payload[key] is None else 'empty'}; leave it out or give a value")
    return payload


def _flag(value, words=("true", "false")) -> bool:
    """A boolean field: JSON true/false, or the words a form or query may carry."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in words:
        return value.strip().lower() in ("1", "true", "yes")
    raise ApiError(422, "'overlay' must be true or false")


def create_app(segmenters: dict, options: ServeOptions | None = None, *, page: bool = True):
    """The FastAPI app over loaded segmenters (``{name: engine segmenter}``)."""
    from fastapi import FastAPI

    from vlmsam.errors import PromptError

    options = options or ServeOptions()
    engine = Engine(segmenters, options)
    names = list(segmenters)

    async def lifespan(app):
        await engine.start()
        yield
        await engine.stop()

    app = FastAPI(title="vlmsam", version=__import__("vlmsam").__version__, lifespan=lifespan,
                  description="Reasoning segmentation: an image and a request in, masks (COCO RLE) and the answer out.")
    app.state.engine = engine
    install_guard(app, options)
    install_handlers(app)
    common = schema.error_responses(400, 401, 404, 405, 413, 415, 422, 503)

    @app.get("/healthz", response_model=schema.Health, responses=schema.error_responses(404, 405))
    async def healthz():
        return {"status": "ok"}

    @app.get("/v1/models", response_model=schema.ModelsAnswer, responses=schema.error_responses(401, 404, 405))
    async def models():
        out = []
        for name, seg in engine.segmenters.items():
            device = getattr(seg, "device", None)
            out.append({"name": name, "model": getattr(seg, "label", name), "device": str(device) if device is not None else "cpu"})
        return {"segmenters": out, "cached_images": len(engine.images), "batched_requests": engine.batched}

    @app.post("/v1/images", response_model=schema.ImageAnswer, responses=common,
              openapi_extra=schema.request_body(names, options.max_prompt_chars, options.max_upload_bytes, segment=False))
    async def images(request: Request):
        payload = await read_payload(request, options)
        if "image_bytes" not in payload:
            raise ApiError(422, "send the image (a file part 'image', or base64 'image' in JSON)")
        name, _ = engine.segmenter(payload.get("segmenter"))
        image = decode_image(payload["image_bytes"], options)
        t0 = time.perf_counter()
        encoded = await engine.encode(name, image)
        image_id = engine.remember(name, encoded, image)
        return {"image_id": image_id, "segmenter": name, "image_size": [image.height, image.width],
                "encode_seconds": round(time.perf_counter() - t0, 6), "request_id": request.state.request_id}

    @app.post("/v1/segment", response_model=schema.SegmentAnswer, response_model_exclude_none=True, responses=common,
              openapi_extra=schema.request_body(names, options.max_prompt_chars, options.max_upload_bytes, segment=True))
    async def segment(request: Request):
        payload = await read_payload(request, options)
        prompt = check_prompt(payload.get("prompt"), options)
        overlay = _flag(payload.get("overlay"))
        if "overlay" in request.query_params:
            overlay = _flag(request.query_params["overlay"], ("1", "true", "yes", "0", "false", "no", ""))
        t0 = time.perf_counter()
        if "image_id" in payload and "image_bytes" in payload:
            raise ApiError(422, "send either an image or an image_id, not both")
        if "image_id" in payload:
            name, encoded, image = engine.recall(payload["image_id"])
            if payload.get("segmenter", name) != name:
                raise ApiError(422, f"this image_id was encoded by '{name}', not '{check_text(payload['segmenter'], 'segmenter', 200)}'")
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
        body["timings"] = {"encode_image": round(encode_s, 6), **body["timings"], "total": round(time.perf_counter() - t0, 6)}
        body.update(segmenter=name, request_id=request.state.request_id)
        return body

    if options.api_key:
        _with_security(app)
    if page:
        from vlmsam.serve.page import mount_page

        mount_page(app, engine)
    return app


def _with_security(app) -> None:
    build = app.openapi

    def openapi():
        if not app.openapi_schema:
            app.openapi_schema = schema.add_security(build())
        return app.openapi_schema

    app.openapi = openapi
