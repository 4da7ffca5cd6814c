"""Models named by hub id: say at once when one cannot be had (no network, not in the local cache),
instead of after half a minute of retries and warnings."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path

from vlmsam.errors import CheckpointError

HUB_HOST = "huggingface.co"


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host resolves and accepts a connection (once per process)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", f"https://{HUB_HOST}").split("://", 1)[-1].split("/", 1)[0]
    host, _, port = endpoint.partition(":")
    try:
        with socket.create_connection((host, int(port or 443)), timeout=timeout):
            return True
    except OSError:
        return False


def check_available(name: str, what: str = "model") -> None:
    """Raise a one-line CheckpointError when ``name`` is neither a local path, nor cached, nor reachable."""
    if Path(name).expanduser().exists():
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return
    except Exception:  # an odd name is for from_pretrained to judge
        return
    if not hub_reachable():
        raise CheckpointError(f"{name}: not a local path, not in the Hugging Face cache, and the hub cannot be reached "
                              f"(no network?); download the {what} where there is network, or pass a local directory")
