"""The HTTP API as OpenAPI describes it: request bodies (JSON and multipart), answers and errors.

The handlers read bodies themselves (an image may come as a file part or as base64 JSON, with size
limits checked before decoding), so the request schemas are given to FastAPI as ``openapi_extra``;
the answers are pydantic models. What a schema cannot say (that the bytes are an image Pillow can
read, that an ``image_id`` is still cached) is a 422 / 404 with the error model.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: Every request's error statuses, with what each means.
ERRORS = {
    400: "Malformed HTTP request (e.g. a bad Content-Length), or the client disconnected mid-body.",
    401: "Missing or wrong API key (X-API-Key or Authorization: Bearer), when the server has one.",
    404: "Unknown route, segmenter or image_id.",
    405: "Method not allowed on this route (see the Allow header).",
    413: "The image, the body or the prompt is over the server's limits.",
    415: "The body is neither multipart/form-data nor application/json.",
    422: "The request is well-formed but cannot be used: not an image, an empty or undecodable prompt, a wrong field.",
    502: "The VLM endpoint this segmenter calls (a served VLM) is down or gave no usable answer.",
    503: "The request queue is full; retry after the Retry-After seconds.",
}
# Text with at least one non-space character and no control characters but tab, newline and return
# (what clean_text accepts).
_TEXT = r"[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]"
PROMPT_PATTERN = rf"^{_TEXT}*[^\s\u0000-\u001F\u007F-\u009F]{_TEXT}*$"


class ErrorBody(BaseModel):
    error: str = Field(description="One line saying what is wrong and what to do.")
    request_id: str = Field(description="Also in the X-Request-Id header and the server's log.")


class Rle(BaseModel):
    size: list[int] = Field(min_length=2, max_length=2, description="[height, width]")
    counts: str = Field(description="COCO compressed RLE (pycocotools' string form)")


class SegmentAnswer(BaseModel):
    answer: str
    num_masks: int = Field(ge=0)
    image_size: list[int] = Field(min_length=2, max_length=2, description="[height, width]")
    masks: list[Rle]
    boxes_xyxy: list[list[float]]
    scores: list[float]
    labels: list[str]
    timings: dict[str, float]
    info: dict[str, Any]
    segmenter: str
    request_id: str
    overlay_png_base64: str | None = Field(None, description="with overlay=true: every mask drawn on the image, a PNG")
    trace: dict[str, Any] | None = Field(None, description="with trace=true, for a design that keeps one (agent): "
                                         "'steps' (each turn's reasoning, tool call and outcome) and 'pictures' "
                                         "(each step's picture by name, a base64 PNG)")


class ImageAnswer(BaseModel):
    image_id: str
    segmenter: str
    image_size: list[int] = Field(min_length=2, max_length=2)
    encode_seconds: float
    request_id: str


class SegmenterInfo(BaseModel):
    name: str
    model: str
    device: str


class ModelsAnswer(BaseModel):
    segmenters: list[SegmenterInfo]
    cached_images: int
    batched_requests: int


class Health(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: str


def _example_png() -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (40, 120, 200)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _fields(names: list[str], max_prompt: int, max_bytes: int, *, binary: bool, segment: bool) -> dict:
    image = ({"type": "string", "format": "binary", "description": f"the image file (at most {max_bytes:,} bytes)"}
             if binary else {"type": "string", "format": "byte", "description": "the image file, base64",
                             "minLength": 4, "maxLength": max_bytes * 4 // 3 + 4})
    props: dict[str, Any] = {
        "image": image,
        "segmenter": {"type": "string", "enum": names, "description": "a loaded segmenter (default: the first)"},
    }
    if segment:
        props.update(
            prompt={"type": "string", "minLength": 1, "maxLength": max_prompt, "pattern": PROMPT_PATTERN,
                    "description": "what to segment, in words"},
            image_id={"type": "string", "minLength": 1, "maxLength": 200, "pattern": rf"^{_TEXT}+$",
                      "description": "instead of image: a handle from POST /v1/images"},
            overlay={"type": "boolean", "description": "also return every mask drawn on the image as a PNG "
                     "(multipart: 'true' or 'false'; the query parameter ?overlay=1 works for both bodies)"},
            trace={"type": "boolean", "description": "also return the agent's steps and their pictures "
                   "(as overlay: 'true' / 'false', or ?trace=1)"},
        )
    return props


def request_body(names: list[str], max_prompt: int, max_bytes: int, *, segment: bool) -> dict:
    """``openapi_extra`` for POST /v1/segment (``segment``) or POST /v1/images."""
    def schema(binary: bool) -> dict:
        # Multipart parsers drop parts they cannot name, so only JSON bodies promise no other fields.
        out = {"type": "object", "additionalProperties": binary,
               "properties": _fields(names, max_prompt, max_bytes, binary=binary, segment=segment)}
        if segment:
            out["required"] = ["prompt"]
            out["oneOf"] = [{"required": ["image"]}, {"required": ["image_id"]}]  # one, not both
        else:
            out["required"] = ["image"]
        return out

    example = {"image": _example_png(), **({"prompt": "the blue square"} if segment else {})}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema(False), "example": example},
        "multipart/form-data": {"schema": schema(True)},
    }}}


def error_responses(*statuses: int) -> dict:
    return {s: {"model": ErrorBody, "description": ERRORS[s]} for s in statuses}


def add_security(openapi: dict) -> dict:
    """With an API key: the scheme, required on every /v1 route."""
    openapi.setdefault("components", {}).setdefault("securitySchemes", {})["ApiKey"] = {
        "type": "apiKey", "in": "header", "name": "X-API-Key"}
    for path, ops in openapi.get("paths", {}).items():
        if path.startswith("/v1/"):
            for op in ops.values():
                op["security"] = [{"ApiKey": []}]
    return openapi
