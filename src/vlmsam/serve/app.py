"""``vlmsam serve``'s HTTP API (FastAPI), put together: the gate (``gate.py``), the request queue
(``queue.py``), the payload readers (``payload.py``), the routes (``routes.py``), the OpenAPI description
(``schema.py``) and the page (``page.py``).

Models are loaded once, before the app starts; a request names a loaded segmenter and never causes a
rebuild. Images arrive only as bytes (multipart or base64 JSON), never as a path or URL the server
would open. ``POST /v1/images`` encodes an image once and keeps the handle in a bounded LRU. A bounded
queue answers 503 with ``Retry-After`` when full. Every error, on every route (unknown ones too), is
the JSON error model with a request id that is also in the server's log, never a traceback. With an
API key, every route but ``/healthz`` and the API's documentation needs it, the web page included
(``/?api_key=KEY`` once in a browser sets a cookie).
"""

from __future__ import annotations

from vlmsam.serve import schema
from vlmsam.serve.gate import install_guard, install_handlers
from vlmsam.serve.queue import ApiError, RequestQueue, ServeOptions, decode_image
from vlmsam.serve.routes import add_routes, encode_result

__all__ = ["ApiError", "RequestQueue", "ServeOptions", "create_app", "decode_image", "encode_result"]


def create_app(segmenters: dict, options: ServeOptions | None = None, *, page: bool = True):
    """The FastAPI app over loaded segmenters (``{name: engine segmenter}``)."""
    from fastapi import FastAPI

    options = options or ServeOptions()
    queue = RequestQueue(segmenters, options)

    async def lifespan(app):
        await queue.start()
        yield
        await queue.stop()

    app = FastAPI(title="vlmsam", version=__import__("vlmsam").__version__, lifespan=lifespan,
                  description="Reasoning segmentation: an image and a request in, masks (COCO RLE) and the answer out.")
    app.state.queue = queue
    install_guard(app, options)
    install_handlers(app)
    add_routes(app, queue, options)
    if options.api_key:
        _with_security(app)
    if page:
        from vlmsam.serve.page import mount_page

        mount_page(app, queue)
    return app


def _with_security(app) -> None:
    build = app.openapi

    def openapi():
        if not app.openapi_schema:
            app.openapi_schema = schema.add_security(build())
        return app.openapi_schema

    app.openapi = openapi
