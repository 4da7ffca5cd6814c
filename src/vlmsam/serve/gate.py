"""The one gate in front of every route, the API's and the page's: a request id, the API key (header,
bearer token or the page's cookie), methods (405 with ``Allow``), file payloads of the page's Gradio
calls (uploads to this server only), and every error, unknown routes included, in the error model."""

from __future__ import annotations

import logging
import os
import secrets
import uuid

from fastapi import Request  # module level: the handler annotations below are resolved here
from starlette.requests import ClientDisconnect

from vlmsam.serve.queue import ApiError, ServeOptions

log = logging.getLogger("vlmsam.serve")
PUBLIC = ("/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
KEY_COOKIE = "vlmsam_api_key"


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
        return error(request, exc.http_status, first_line(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        return error(request, exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return error(request, 422, f"invalid request: {where or 'body'}: {first.get('msg', 'malformed')}")
