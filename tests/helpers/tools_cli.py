"""The repository's workshop commands (``python -m tools.pretrain``) as real processes, as
``tests.conftest.run_cli`` runs ``vlmsam``: tools/ is not installed, so the repository root is put on
the child's path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_pretrain(command: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m tools.pretrain COMMAND ARGS...`` (COMMAND: ``sam`` or ``vision``)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "tools.pretrain", command, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": path})


def assert_pretrain_help_states_defaults(command: str, config, extra: tuple[str, ...] = ()) -> None:
    """``python -m tools.pretrain COMMAND --help`` states ``config``'s own defaults for the options whose
    defaults the command leaves to the config class."""
    text = " ".join(run_pretrain(command, "--help").stdout.split())
    for flag in ("--steps", "--batch-size", "--lr", "--seed", *extra):
        value = getattr(config, flag.strip("-").replace("-", "_"))
        described = text.rsplit(f"{flag} {flag.strip('-').replace('-', '_').upper()} ", 1)[1].split(" --")[0]
        assert f"(default {value:g})" in described, (command, flag, described)
