"""Reading a request's payload: multipart or JSON (bounded), the fields each route accepts, no nulls or
blanks, strict booleans. What the payload means is checked by the queue's checks (``serve/queue.py``)."""

from __future__ import annotations

import base64
import binascii

from fastapi import Request
from starlette.requests import ClientDisconnect

from vlmsam.serve.queue import ApiError, ServeOptions

PAYLOAD_FIELDS = {"/v1/segment": {"image", "image_id", "prompt", "segmenter", "overlay", "trace"}, "/v1/images": {"image", "segmenter"}}


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
    for key in ("segmenter", "image_id", "prompt", "overlay", "trace"):  # present means given: no nulls, no blanks
        if key in payload and (payload[key] is None or (key in ("segmenter", "image_id") and payload[key] == "")):
            raise ApiError(422, f"'{key}' is {'null' if payload[key] is None else 'empty'}; leave it out or give a value")
    return payload


def read_flag(value, words=("true", "false"), name: str = "overlay") -> bool:
    """A boolean field ``name``: JSON true/false, or the words a form or query may carry."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in words:
        return value.strip().lower() in ("1", "true", "yes")
    raise ApiError(422, f"'{name}' must be true or false")
