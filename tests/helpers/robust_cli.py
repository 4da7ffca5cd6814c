"""Running the real ``vlmsam`` entry point in this process (one torch import for a whole test file), and
the small files the hostile-input tests share: tiny shape scenes, a 1x20000 PNG, a FIFO, a socket."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
from pathlib import Path

import numpy as np
from PIL import Image

from vlmsam.engine.registry import DEFAULT_MODEL_DIR

BUNDLED_SAM = DEFAULT_MODEL_DIR / "sam"


def cli(capsys, *argv, alarm_s: int = 120) -> tuple[int, str, list[str]]:
    """``(exit code, stdout, stderr lines)`` of ``vlmsam ARGV`` run through ``vlmsam.cli.main.main``.
    Progress-bar lines are left out; a traceback fails the test; ``alarm_s`` ends a hang."""
    import transformers

    from vlmsam.cli.main import main

    transformers.utils.logging.disable_progress_bar()  # as the CLI's environment does in a fresh process
    transformers.utils.logging.set_verbosity_error()

    def hang(*_):
        raise TimeoutError(f"vlmsam {' '.join(map(str, argv))} hung for {alarm_s} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(alarm_s)
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err, cap.err[-3000:]
    return rc, cap.out, message_lines(cap.err)


_BAR = re.compile(r"[^\r\n|]*\d+%\|[^|]*\|[^\[\r\n]*\[[^\]\r\n]*\]")  # "synth:  0%|    | 0/3 [00:00<?, ?scene/s]"


def message_lines(err: str) -> list[str]:
    """The lines of ``err`` with progress bars (tqdm redraws them with \\r) taken out."""
    return [line.strip() for line in _BAR.sub("", err).splitlines() if line.strip()]


def assert_one_line(rc, lines, *words) -> None:
    assert rc == 2, (rc, lines)
    assert len(lines) == 1, lines
    assert lines[0].startswith("vlmsam ") and "error" in lines[0], lines
    for w in words:
        assert str(w) in lines[0], (w, lines)


def scene(path: Path, shift: int = 0, colour=(230, 30, 30), size=(60, 80)) -> Path:
    """A grey scene with one coloured rectangle, as the bundled model's training scenes look."""
    img = np.full((*size, 3), 90, np.uint8)
    img[10 + shift:30 + shift, 20 + shift:50 + shift] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def thin_png(path: Path) -> Path:
    """A 1x20000 PNG: an aspect ratio load_image refuses."""
    Image.new("RGB", (1, 20000), (10, 200, 10)).save(path)
    return path


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@contextlib.contextmanager
def unix_socket(path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        yield path
    finally:
        sock.close()


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to show nothing was changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
