"""``vlmsam serve``: the API and the page, one process, models loaded once."""

from __future__ import annotations

import argparse
import os

from vlmsam.cli.types import integer, number, port


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the segmenters over HTTP (JSON API + web page)",
                       description="Start one process that loads the segmenters once and serves POST /v1/segment, "
                       "POST /v1/images, GET /v1/models, GET /healthz, OpenAPI at /docs and a web page at /. Without an "
                       "API key it listens on 127.0.0.1 only, unless --host is given.",
                       epilog="example: vlmsam serve --port 8000   then   curl -F image=@scene.jpg -F prompt='the red circle' "
                       "http://127.0.0.1:8000/v1/segment")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8000)
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]DIR",
                   help="a checkpoint to serve (repeatable; NAME defaults to its design); default: the bundled defaults")
    p.add_argument("--segmenter", action="append", default=[], help="serve a design's bundled default (repeatable)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--api-key", default=os.environ.get("VLMSAM_API_KEY"),
                   help="require this key on every route but /healthz and the API docs, the web page included (X-API-Key or "
                   "Authorization: Bearer; in a browser open /?api_key=KEY once); env VLMSAM_API_KEY")
    p.add_argument("--concurrency", type=integer(1, 256), default=1, help="model calls at once (default 1)")
    p.add_argument("--max-queue", type=integer(0, 100_000), default=16, help="waiting requests beyond those running; more get 503 (default 16)")
    p.add_argument("--cache-size", type=integer(1, 100_000), default=32, help="encoded images kept for image_id requests (default 32)")
    p.add_argument("--max-upload-mb", type=number(0, 4096, lo_open=True, what="a size in MB"), default=20.0, help="largest image upload (default 20)")
    p.add_argument("--no-page", action="store_true", help="the API only, no web page")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from vlmsam.errors import VlmsamError

    for flag, value in (("--concurrency", args.concurrency), ("--max-queue", args.max_queue), ("--cache-size", args.cache_size)):
        if value < 1:
            raise VlmsamError(f"{flag} must be at least 1")
    if not 0 < args.port < 65536:
        raise VlmsamError(f"--port {args.port}: use 1-65535")
    import logging

    import uvicorn

    from vlmsam.devices import resolve_device
    from vlmsam.serve.app import ServeOptions, create_app
    from vlmsam.segmenter import load_segmenter

    device = resolve_device(args.device)
    host = args.host or "127.0.0.1"
    loaded = {}
    for spec in args.model:
        name, _, path = spec.rpartition("=")
        seg = load_segmenter(path, device=device, dtype=args.dtype).engine
        loaded[name or seg.name] = seg
    for design in args.segmenter:
        loaded[design] = load_segmenter(segmenter=design, device=device, dtype=args.dtype).engine
    if not loaded:
        loaded["seg_token"] = load_segmenter(device=device, dtype=args.dtype).engine
    options = ServeOptions(concurrency=args.concurrency, max_queue=args.max_queue, cache_size=args.cache_size,
                           max_upload_bytes=int(args.max_upload_mb * 2**20), api_key=args.api_key)
    app = create_app(loaded, options, page=not args.no_page)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    note = "an API key is required (browser: open /?api_key=KEY once)" if args.api_key else \
        ("no API key: listening on 127.0.0.1 only" if not args.host else "no API key set: anyone who reaches this address can use it")
    print(f"vlmsam serve: {', '.join(f'{k} ({v.label})' for k, v in loaded.items())} on http://{host}:{args.port} ({note})", flush=True)
    from vlmsam.serve.http import JsonErrorH11Protocol

    config = uvicorn.Config(app, host=host, port=args.port, log_level="warning", timeout_graceful_shutdown=30,
                            http=JsonErrorH11Protocol)
    server = _server_class()(config)
    server.run()
    return 0


def _server_class():
    import contextlib
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        """SIGTERM / SIGINT: stop accepting, finish in-flight requests, exit 0 (uvicorn itself re-raises the
        signal after its graceful shutdown, which makes the exit status look like a crash)."""

        @contextlib.contextmanager
        def capture_signals(self):
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server
