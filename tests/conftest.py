"""Shared fixtures: tiny real SAM checkpoints written to disk, sample images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# One thread per core in each pytest-xdist worker: a worker that also asked for every core made the tiny
# models' token-by-token generation many times slower through oversubscription.
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))
# Under pytest-xdist the other worker keeps running while a test waits on its process, so that process (a CLI
# run, an evaluation, a training) gets this worker's share too: with two threads each, a CLI evaluation
# beside a busy worker ran 10-20x slower than alone (spinning OpenMP threads on two cores).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models, also outside pytest-xdist: a second thread only
    adds synchronisation (about 10x slower per generated token on a busy two-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_weights = pytest.mark.skip(reason="needs real weights (set VLMSAM_WEIGHTS_DIR)")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "weights" in item.keywords and not os.environ.get("VLMSAM_WEIGHTS_DIR"):
            item.add_marker(skip_weights)


@pytest.fixture(scope="session")
def tiny_meta(tmp_path_factory):
    """``(meta_model, segment_anything_module, path_to_pth)``: a small random Meta SAM saved as .pth."""
    from tests.helpers.meta_sam import build_tiny_meta_sam

    model, sa = build_tiny_meta_sam(seed=0)
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_tiny.pth"
    torch.save(model.state_dict(), path)
    return model, sa, path


@pytest.fixture(scope="session")
def tiny_sam_dir(tiny_meta, tmp_path_factory):
    """The tiny Meta checkpoint converted to a transformers directory."""
    from vlmsam.sam.checkpoints import load_meta_checkpoint, save_converted

    return save_converted(load_meta_checkpoint(tiny_meta[2]), tmp_path_factory.mktemp("converted") / "sam")


@pytest.fixture(scope="session")
def scene_image() -> np.ndarray:
    """A 300x420 RGB image with a few flat shapes on a noisy background (uint8)."""
    rng = np.random.default_rng(0)
    img = (rng.random((300, 420, 3)) * 60 + 100).astype(np.uint8)
    img[40:160, 50:200] = (220, 30, 30)
    yy, xx = np.mgrid[:300, :420]
    img[(yy - 200) ** 2 + (xx - 300) ** 2 < 60**2] = (30, 30, 220)
    return img


@pytest.fixture
def scene_path(tmp_path, scene_image) -> Path:
    path = tmp_path / "scene.png"
    Image.fromarray(scene_image).save(path)
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real ``vlmsam`` console entry point in a new process."""
    return subprocess.run(
        [sys.executable, "-m", "vlmsam", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def assert_help_states_defaults(command: str, config, extra: tuple[str, ...] = ()) -> None:
    """``vlmsam COMMAND --help`` states ``config``'s own defaults for the options whose defaults
    the CLI leaves to the config class (the pre-training commands)."""
    text = " ".join(run_cli(command, "--help").stdout.split())
    for flag in ("--steps", "--batch-size", "--lr", "--seed", *extra):
        value = getattr(config, flag.strip("-").replace("-", "_"))
        described = text.rsplit(f"{flag} {flag.strip('-').replace('-', '_').upper()} ", 1)[1].split(" --")[0]
        assert f"(default {value:g})" in described, (command, flag, described)
