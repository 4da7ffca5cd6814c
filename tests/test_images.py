import http.server
import socket
import threading
import zlib
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmsam.errors import ImageLoadError
from vlmsam.io.images import load_image


def test_rgb_file_roundtrip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.mode == "RGB" and img.size == (30, 20)
    assert np.array_equal(np.asarray(img), arr)


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :10] = 255  # white stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(arr).save(tmp_path / "rot.jpg", exif=exif, quality=100)
    img = load_image(tmp_path / "rot.jpg")
    assert img.size == (20, 40)  # width and height swapped
    top = np.asarray(img)[:10].mean()
    bottom = np.asarray(img)[-10:].mean()
    assert top > 200 and bottom < 50  # the left stripe is now on top


@pytest.mark.parametrize(
    "mode, make",
    [
        ("L", lambda: Image.fromarray(np.full((8, 8), 77, np.uint8))),
        ("P", lambda: Image.fromarray(np.full((8, 8, 3), 77, np.uint8)).convert("P", palette=Image.ADAPTIVE)),
        ("I;16", lambda: Image.fromarray(np.full((8, 8), 77 * 257, np.uint16))),
    ],
)
def test_non_rgb_modes_become_rgb(tmp_path, mode, make):
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    make().save(path)
    img = load_image(path)
    assert img.mode == "RGB"
    assert np.abs(np.asarray(img).astype(int) - 77).max() <= 1


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[0, 0] = (255, 0, 0, 255)  # opaque red
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")  # the rest: fully transparent
    out = np.asarray(load_image(tmp_path / "a.png"))
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[3, 3]) == (255, 255, 255)


def test_arrays_and_pil_images(scene_image):
    assert load_image(scene_image).size == (420, 300)
    assert load_image(Image.fromarray(scene_image).convert("L")).mode == "RGB"
    with pytest.raises(ImageLoadError, match="shape"):
        load_image(np.zeros((2, 2, 7), np.uint8))


def test_missing_empty_directory(tmp_path):
    with pytest.raises(ImageLoadError, match="nope.jpg: no such file"):
        load_image(tmp_path / "nope.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty.jpg: the file is empty \(0 bytes\)"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path)


def test_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is text, not a JPEG")
    with pytest.raises(ImageLoadError, match="notes.jpg: not an image"):
        load_image(tmp_path / "notes.jpg")


def test_truncated_jpeg(tmp_path, scene_image):
    Image.fromarray(scene_image).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="cut.jpg: the image is damaged or truncated"):
        load_image(tmp_path / "cut.jpg")


def write_huge_png(path: Path, width: int, height: int) -> None:
    """A valid 1-bit PNG of width x height, all black, a few hundred kilobytes on disk."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    chunks = [compressor.compress(row * 1000) for _ in range(height // 1000)]
    chunks.append(compressor.compress(row * (height % 1000)))
    chunks.append(compressor.flush())
    idat = b"".join(chunks)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    write_huge_png(path, 30000, 30000)
    assert path.stat().st_size < 5_000_000
    with pytest.raises(ImageLoadError, match=r"bomb.png: 30000x30000 is 900,000,000 pixels, over the"):
        load_image(path)
    # The limit is a setting, not a constant: a trusted file can be let through explicitly.
    small = tmp_path / "small.png"
    write_huge_png(small, 100, 100)
    with pytest.raises(ImageLoadError, match="over the 5,000-pixel limit"):
        load_image(small, max_pixels=5000)
    assert load_image(small).size == (100, 100)


@pytest.fixture
def http_root(tmp_path, scene_image):
    Image.fromarray(scene_image).save(tmp_path / "scene.jpg")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(tmp_path), **k)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_loading(http_root, tmp_path):
    img = load_image(f"{http_root}/scene.jpg")
    assert img.size == (420, 300)
    assert np.array_equal(np.asarray(img), np.asarray(load_image(tmp_path / "scene.jpg")))
    with pytest.raises(ImageLoadError, match="HTTP 404"):
        load_image(f"{http_root}/missing.jpg")
    with pytest.raises(ImageLoadError, match="download limit"):
        load_image(f"{http_root}/scene.jpg", max_bytes=1000)


def test_url_timeout():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection but never answers
    try:
        with pytest.raises(ImageLoadError, match="could not be downloaded"):
            load_image(f"http://127.0.0.1:{listener.getsockname()[1]}/slow.jpg", timeout=0.5)
    finally:
        listener.close()
