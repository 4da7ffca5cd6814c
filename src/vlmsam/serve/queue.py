"""The server's request queue: its limits, the image cache and the batching of requests.

Requests about the same encoded image that wait in the queue together are answered by one
``segment_many``. Every request is checked before it joins a batch, and a failure inside a batch is
retried request by request, so one client's bad request never fails another's.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

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


def check_text(value, what: str, max_chars: int, *, required: bool = True) -> str | None:
    """A client's text field, through the one sanitiser (valid Unicode, no control characters)."""
    from vlmsam.errors import PromptError
    from vlmsam.io.text import clean_text

    if value is None and not required:
        return None
    if isinstance(value, str) and len(value) > 10 * max_chars:
        raise ApiError(413, f"{what} has {len(value):,} characters; at most {max_chars:,} are accepted")
    try:
        return clean_text(value, what, max_chars)
    except PromptError as exc:
        raise ApiError(422, str(exc)) from None


def check_prompt(prompt, options: ServeOptions) -> str:
    if isinstance(prompt, str) and not prompt.strip() or prompt is None:
        raise ApiError(422, "the prompt is empty: say what to segment, e.g. \"the red circle\"")
    return check_text(prompt, "the prompt", options.max_prompt_chars).strip()


def decode_image(data: bytes, options: ServeOptions):
    """Bytes -> an upright RGB PIL image, with the server's size limits (413) and a clear 422 otherwise."""
    from PIL import Image

    from vlmsam.errors import ImageLoadError
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
        raise ApiError(422, f"the image cannot be decoded or used ({str(exc).split(': ', 1)[-1]})") from None
    except Exception:
        raise ApiError(422, "the image cannot be decoded (truncated or corrupt)") from None


@dataclass
class Job:
    segmenter: str
    encoded: object
    request: str
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class RequestQueue:
    """The server's request queue: the loaded segmenters, the image cache and the batching queue (one per
    server; the page and the API both go through it)."""

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

    def segmenter(self, name):
        if name is not None and not isinstance(name, str):
            raise ApiError(422, f"'segmenter' must be a name (one of {', '.join(self.segmenters)}), not {type(name).__name__}")
        name = check_text(name or next(iter(self.segmenters)), "'segmenter'", 200)
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

    def recall(self, image_id) -> tuple:
        if not isinstance(image_id, str):
            raise ApiError(422, f"'image_id' must be a string from POST /v1/images, not {type(image_id).__name__}")
        image_id = check_text(image_id, "'image_id'", 200)
        if image_id not in self.images:
            raise ApiError(404, f"unknown image_id '{image_id}' (expired or never uploaded; POST /v1/images again)")
        self.images.move_to_end(image_id)
        return self.images[image_id]

    async def submit(self, name: str, encoded, request: str):
        from vlmsam.engine.contract import check_request
        from vlmsam.errors import PromptError

        try:  # checked here, before it can join a batch with other clients' requests
            request = check_request(request)
        except PromptError as exc:
            raise ApiError(422, str(exc)) from None
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(Job(name, encoded, request, future))
        except asyncio.QueueFull:
            raise ApiError(503, "the server is busy: the request queue is full; retry shortly", {"Retry-After": "1"}) from None
        return await future

    def _take_batch(self, job: Job) -> list[Job]:
        """``job`` and the waiting requests about the same encoded image; the rest go back in order."""
        batch, waiting = [job], []
        while not self.queue.empty():
            other = self.queue.get_nowait()
            (batch if other.segmenter == job.segmenter and other.encoded is job.encoded else waiting).append(other)
        for other in waiting:
            self.queue.put_nowait(other)
        return batch

    async def _worker(self) -> None:
        while True:
            batch = self._take_batch(await self.queue.get())
            seg = self.segmenters[batch[0].segmenter]
            try:
                results = await self.run(seg.segment_many, batch[0].encoded, [j.request for j in batch])
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch[0], exc=exc)
                    continue
                # One request broke the batch: answer each alone, so only the bad one fails.
                log.warning("a batch of %d failed (%s); answering its requests one by one", len(batch), exc)
                for j in batch:
                    try:
                        _settle(j, result=(await self.run(seg.segment_many, j.encoded, [j.request]))[0])
                    except Exception as single:
                        _settle(j, exc=single)
                continue
            if len(batch) > 1:
                self.batched += len(batch)
            for j, r in zip(batch, results):
                _settle(j, result=r)


def _settle(job: Job, result=None, exc: BaseException | None = None) -> None:
    if job.future.done():  # the client went away
        return
    if exc is not None:
        job.future.set_exception(exc)
    else:
        job.future.set_result(result)
