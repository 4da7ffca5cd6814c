"""Writing results into hostile places: a folder of the user's own files, a full disk, a read-only
disk, /proc/self, a file-size limit. vlmsam never replaces or deletes a file it did not write, writes
one image's files all or none, and every failure is one line (exit code 2 from the CLI)."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers.robust_cli import BUNDLED_SAM, assert_one_line, cli, listing, message_lines
from vlmsam.errors import VlmsamError
from vlmsam.io.result_set import MANIFEST
from vlmsam.io.writer import write_result
from vlmsam.result import SegmentationResult


def noisy(h=300, w=300, seed=0) -> Image.Image:
    """Noise compresses badly: each JPEG of it is well over 100 kB."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def result(h=300, w=300, n=2) -> SegmentationResult:
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        masks[i, 10 * i:10 * i + 50, 20:90] = True
    return SegmentationResult(masks=masks, scores=[0.9] * n, text="Sure.")


def test_a_users_files_are_never_replaced_or_deleted(tmp_path):
    out = tmp_path / "userdir"
    out.mkdir()
    (out / "photo.json").write_text('{"mine": true}')
    (out / "x_mask_3.png").write_bytes(b"the user's mask")
    before = listing(out)
    with pytest.raises(VlmsamError, match=r"photo\.json: exists and was not written by vlmsam; pick another --out"):
        write_result(result(), noisy(), out, "photo")
    assert listing(out) == before  # nothing of the set was written

    write_result(result(), noisy(), out, "x")  # x_mask_3.png is the user's: the stale clean-up leaves it
    write_result(result(n=1), noisy(), out, "x")  # x_mask_1.png was ours: now stale, deleted
    assert (out / "x_mask_3.png").read_bytes() == b"the user's mask" and (out / "photo.json").read_text() == '{"mine": true}'
    assert not (out / "x_mask_1.png").exists() and (out / "x_mask_0.png").exists()
    written = set(json.loads((out / MANIFEST).read_text())["written"])
    assert written == {"x_mask_0.png", "x_masked_img_0.jpg", "x_overlay.jpg", "x.json"}
    write_result(result(n=1), noisy(), out, "x")  # our own files are ours to replace


@pytest.fixture
def mount(tmp_path):
    """``mount(options)`` -> a fresh tmpfs directory (skips the test where mounting is not allowed)."""
    mounted = []

    def make(options: str):
        path = tmp_path / f"mnt{len(mounted)}"
        path.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()[:200]}")
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_full_disk_leaves_nothing_partial(mount, tmp_path, capsys):
    disk = mount("size=100k")
    small = SegmentationResult(masks=np.zeros((0, 20, 20), bool), text="no")
    write_result(small, Image.new("RGB", (20, 20)), disk, "first")
    before = listing(disk)
    with pytest.raises(VlmsamError, match="no space left on device; nothing was written for this image") as info:
        write_result(result(), noisy(), disk, "big")
    assert len(str(info.value).splitlines()) == 1 and str(disk) in str(info.value)
    assert listing(disk) == before  # no mask without its json, no temporary, the manifest as it was

    noisy(400, 400).save(tmp_path / "big.png")
    rc, _, err = cli(capsys, "segment", tmp_path / "big.png", "the red square", "--out", disk, "--max-new-tokens", "4")
    assert_one_line(rc, err, "no space left on device", "nothing was written")
    rc, _, err = cli(capsys, "sam", tmp_path / "big.png", "--sam", BUNDLED_SAM, "--box", "10,10,200,200", "--out", disk)
    assert_one_line(rc, err, "no space left on device")
    assert listing(disk) == before


def test_an_oserror_escaping_a_command_is_one_line(mount, capsys):
    disk = mount("size=100k")
    rc, _, err = cli(capsys, "data", "synth", "--out", disk, "--n", "200")  # writes until the disk is full
    assert_one_line(rc, err)


def test_a_read_only_out_is_one_line(mount, tmp_path, capsys):
    disk = mount("ro,size=100k")
    with pytest.raises(VlmsamError, match="read-only file system"):
        write_result(result(), noisy(), disk, "x")
    noisy(60, 80).save(tmp_path / "img.png")
    rc, _, err = cli(capsys, "sam", tmp_path / "img.png", "--sam", BUNDLED_SAM, "--box", "1,1,40,40", "--out", disk)
    assert_one_line(rc, err, "read-only file system", "nothing was written")
    rc, _, err = cli(capsys, "segment", tmp_path / "img.png", "the cup", "--out", disk / "sub", "--max-new-tokens", "4")
    assert_one_line(rc, err, "sub")


def test_out_in_proc_is_one_line(tmp_path, capsys):
    with pytest.raises(VlmsamError, match="/proc/self/"):
        write_result(result(), noisy(), "/proc/self", "x")
    noisy(60, 80).save(tmp_path / "img.png")
    rc, _, err = cli(capsys, "segment", tmp_path / "img.png", "the cup", "--out", "/proc/self", "--max-new-tokens", "4")
    assert_one_line(rc, err, "/proc/self/", "nothing was written")


def _file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _limited(*argv, limit: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlmsam", *map(str, argv)], capture_output=True, text=True, timeout=120,
                          preexec_fn=_file_size_limit(limit), env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_a_file_size_limit_is_one_line_and_nothing_partial(tmp_path):
    """No root needed: RLIMIT_FSIZE makes a write fail as a full disk would (EFBIG)."""
    noisy(400, 400).save(tmp_path / "big.png")
    proc = _limited("sam", tmp_path / "big.png", "--sam", BUNDLED_SAM, "--box", "10,10,300,300", "--out", tmp_path / "o",
                    limit=60_000)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "file too large" in lines[0] and "nothing was written for this image" in lines[0]
    assert not [p.name for p in (tmp_path / "o").iterdir()]

    proc = _limited("data", "synth", "--out", tmp_path / "synth", "--n", "3", limit=2_000)  # a raw OSError: main's catch
    lines = message_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith("vlmsam data: error: ")


def test_an_rle_with_a_negative_run_says_so():
    """Runs that add up right but hold a negative one used to read "16,384 pixels, not 16,384"."""
    import pytest

    from vlmsam.io.writer import check_rle

    with pytest.raises(ValueError, match="run 1 is negative"):
        check_rle({"size": [128, 128], "counts": [16_389, -5]}, (128, 128))
    with pytest.raises(ValueError, match="16,000 pixels, not 16,384"):
        check_rle({"size": [128, 128], "counts": [16_000]}, (128, 128))
