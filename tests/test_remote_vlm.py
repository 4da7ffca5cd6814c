"""An OpenAI-compatible server as the VLM: a real HTTP server started here on 127.0.0.1 serves a tiny
Qwen2.5-VL; the remote answers equal the local ones, and failures are one clear error, never a hang."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pytest

from vlmsam.errors import VlmsamError
from vlmsam.vlm.remote import RemoteVlm, RemoteVlmError
from vlmsam.vlm.runtime import VlmRuntime
from vlmsam.vlm.tiny import save_tiny_vlm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return save_tiny_vlm(tmp_path_factory.mktemp("remote"), "qwen2_5_vl")


def serve(vlm_dir, mode="ok"):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "tests/helpers/openai_server.py", str(vlm_dir), str(port), "--mode", mode],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc, f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def image():
    return (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)


def test_remote_answers_equal_local_ones(vlm_dir, image):
    from PIL import Image

    proc, url = serve(vlm_dir)
    try:
        remote = RemoteVlm(url, "tiny-qwen")
        local = VlmRuntime.load(vlm_dir, dtype="fp32")
        pil = Image.fromarray(image)
        conversations = [[("Locate the cat.", None)], [("What is this?", "Noise."), ("Frame it.", None)]]
        assert remote.chat_many(remote.encode_image(pil), conversations, max_new_tokens=6) == \
            local.chat_many(local.encode_image(pil), conversations, max_new_tokens=6)
        assert remote.model_input_size(remote.encode_image(pil)) == (56, 56)  # Qwen2.5-VL's default resize of 70x50
    finally:
        proc.kill()


def test_box_prompt_over_a_remote_vlm(vlm_dir, tmp_path, image):
    from vlmsam.sam.tiny import build_tiny_sam
    from vlmsam.segmenter import load_segmenter

    build_tiny_sam().save_pretrained(tmp_path / "sam")
    proc, url = serve(vlm_dir)
    try:
        seg = load_segmenter(segmenter="box_prompt", vlm="tiny-qwen", vlm_endpoint=url, sam=str(tmp_path / "sam"), max_new_tokens=6)
        result = seg(image, "the cat")
        assert result.masks.shape[1:] == (50, 70) and isinstance(result.text, str)
        with pytest.raises(VlmsamError, match="--vlm-endpoint does not apply to the seg_token design"):
            load_segmenter(vlm="tiny-qwen", vlm_endpoint=url, sam=str(tmp_path / "sam"))
    finally:
        proc.kill()


@pytest.mark.parametrize("mode, words", [("error500", "HTTP 500"), ("nonsense", "not a chat-completions answer"),
                                         ("slow", "no answer within")])
def test_server_failures_are_one_clear_error(vlm_dir, image, mode, words):
    from PIL import Image

    proc, url = serve(vlm_dir, mode)
    try:
        remote = RemoteVlm(url, "tiny-qwen", timeout=2.0, max_retries=1)
        with pytest.raises(RemoteVlmError, match=words) as info:  # retried, then given up: never a hang
            remote.chat_many(remote.encode_image(Image.fromarray(image)), [[("hi", None)]])
        assert url in str(info.value) and "\n" not in str(info.value)
    finally:
        proc.kill()


def test_unreachable_endpoint(image):
    from PIL import Image

    remote = RemoteVlm(f"http://127.0.0.1:{free_port()}/v1", "m", timeout=2.0, max_retries=0)
    with pytest.raises(RemoteVlmError, match="cannot connect"):
        remote.chat_many(remote.encode_image(Image.fromarray(image)), [[("hi", None)]])
    with pytest.raises(RemoteVlmError, match="http"):
        RemoteVlm("127.0.0.1:8000", "m")
