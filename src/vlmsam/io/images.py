"""One loader for every image a user can hand us: a path, an http(s) URL, a PIL image or an array.

Whatever comes in, an 8-bit RGB ``PIL.Image`` comes out, upright (EXIF orientation applied), or an
:class:`~vlmsam.errors.ImageLoadError` that names the source and says what is wrong.
"""

from __future__ import annotations

import io
import os
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vlmsam.errors import ImageLoadError

#: Images larger than this (width x height) are refused before their pixels are decoded: a 30000²
#: PNG of a few kilobytes would otherwise take gigabytes. Override with VLMSAM_MAX_IMAGE_PIXELS.
DEFAULT_MAX_PIXELS = 100_000_000
#: An image file larger than this is refused before it is read (override: VLMSAM_MAX_IMAGE_BYTES).
DEFAULT_MAX_IMAGE_BYTES = 256 * 2**20
#: Width / height (or its inverse) above this is refused: Qwen-VL's resize refuses it, and SAM's
#: longest-side resize would leave a side of zero pixels.
MAX_ASPECT_RATIO = 200
DEFAULT_URL_TIMEOUT_S = 20.0
DEFAULT_URL_MAX_BYTES = 50 * 1024 * 1024

ImageSource = str | os.PathLike | Image.Image | np.ndarray | bytes


def _max_pixels() -> int:
    from vlmsam.errors import env_int

    return env_int("VLMSAM_MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS, lo=1)


def _max_image_bytes() -> int:
    from vlmsam.errors import env_int

    return env_int("VLMSAM_MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES, lo=1)


def image_key(image: Image.Image) -> str:
    """A content hash: the same pixels give the same key whatever file they came from (the one image key
    of the engine, the server's cache and the SAM backends)."""
    import hashlib

    return hashlib.sha1(image.tobytes() + repr((image.size, image.mode)).encode()).hexdigest()


def is_url(source: object) -> bool:
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


def load_image(
    source: ImageSource,
    *,
    max_pixels: int | None = None,
    timeout: float = DEFAULT_URL_TIMEOUT_S,
    max_bytes: int = DEFAULT_URL_MAX_BYTES,
) -> Image.Image:
    """Load ``source`` as an upright 8-bit RGB image.

    Args:
        source: a file path, an ``http(s)://`` URL, a ``PIL.Image``, an ``(H, W[, C]) uint8`` array, or the
            encoded bytes of an image file.
        max_pixels: refuse images with more pixels than this (default 100 M, or the environment
            variable ``VLMSAM_MAX_IMAGE_PIXELS``).
        timeout: seconds to wait for a URL before giving up.
        max_bytes: refuse downloads larger than this.

    Raises:
        ImageLoadError: the source is missing, empty, truncated, too large or not an image.
    """
    limit = _max_pixels() if max_pixels is None else max_pixels
    if isinstance(source, Image.Image):
        return _to_rgb(source, "<PIL image>", limit)
    if isinstance(source, np.ndarray):
        return _to_rgb(_array_to_pil(source), "<array>", limit)
    if isinstance(source, (bytes, bytearray, memoryview)):  # encoded file contents (what a server receives)
        data = bytes(source)
        if not data:
            raise ImageLoadError("<bytes>: the image is empty (0 bytes)")
        return _decode(data, "<bytes>", limit)
    if is_url(source):
        name = str(source)
        data = _download(name, timeout=timeout, max_bytes=max_bytes)
    else:
        from vlmsam.errors import VlmsamError
        from vlmsam.io.files import read_user_bytes

        name = str(Path(source))
        try:  # regular files only, capped, never blocking (a FIFO, /dev/zero, a socket are refused)
            data = read_user_bytes(name, "an image file", max_bytes=_max_image_bytes())
        except VlmsamError as exc:
            raise ImageLoadError(str(exc).replace("; expected an image file", "")) from None
    if not data:
        raise ImageLoadError(f"{name}: the file is empty (0 bytes)")
    return _decode(data, name, limit)


def _download(url: str, *, timeout: float, max_bytes: int) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "vlmsam"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and int(length) > max_bytes:
                raise ImageLoadError(f"{url}: {int(length)} bytes is over the {max_bytes}-byte download limit")
            data = response.read(max_bytes + 1)
    except ImageLoadError:
        raise
    except urllib.error.HTTPError as e:
        raise ImageLoadError(f"{url}: the server answered HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ImageLoadError(f"{url}: could not be downloaded ({reason}); check the address and the network") from None
    if len(data) > max_bytes:
        raise ImageLoadError(f"{url}: over the {max_bytes}-byte download limit")
    return data


def _decode(data: bytes, name: str, limit: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check is replaced by the explicit limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            old_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                image = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = old_limit
            _check_size(image, name, limit)  # from the header, before any pixel is decoded
            image.load()
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(f"{name}: the image is damaged or truncated ({e})") from None
    return _to_rgb(image, name, limit)


def _check_size(image: Image.Image, name: str, limit: int) -> None:
    w, h = image.size
    if w <= 0 or h <= 0:
        raise ImageLoadError(f"{name}: the image has no pixels ({w}x{h})")
    if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        raise ImageLoadError(
            f"{name}: {w}x{h} has an aspect ratio over {MAX_ASPECT_RATIO}:1, which the models cannot resize "
            "to a usable input; crop or pad it"
        )
    if w * h > limit:
        raise ImageLoadError(
            f"{name}: {w}x{h} is {w * h:,} pixels, over the {limit:,}-pixel limit "
            "(resize it, or raise VLMSAM_MAX_IMAGE_PIXELS if you trust the file)"
        )


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageLoadError(f"<array>: expected (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.size and array.max() <= 1.0:
            array = array * 255.0
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def _to_rgb(image: Image.Image, name: str, limit: int) -> Image.Image:
    """EXIF orientation, then RGB: 16-bit and float gray rescaled, alpha composited on white."""
    _check_size(image, name, limit)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not make a readable image unreadable
        pass
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        if image.mode == "I" and array.max() <= 255:
            top = 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image
