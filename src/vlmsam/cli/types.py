"""argparse types that check numbers where they enter: a value out of range, NaN, inf or 1e30 is one
line naming the option at parse time (``vlmsam X: error: argument --steps: ...``), before any model
loads, instead of a traceback (or a silently odd run) minutes later."""

from __future__ import annotations

import argparse
import math


def integer(lo: int, hi: int | None = None, what: str = "an integer"):
    """An int in ``[lo, hi]`` (``hi`` None: no upper bound beyond 2**63 - 1)."""
    top = hi if hi is not None else 2 ** 63 - 1

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except (ValueError, AttributeError):
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}") from None
        if not lo <= value <= top:
            raise argparse.ArgumentTypeError(f"must be {what} from {lo}" + (f" to {hi}" if hi is not None else " up") + f", not {value}")
        return value

    parse.__name__ = what
    return parse


def number(lo: float, hi: float, *, lo_open: bool = False, what: str = "a number"):
    """A finite float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); NaN and inf are refused."""

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except (ValueError, AttributeError):
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}") from None
        if not math.isfinite(value) or value < lo or value > hi or (lo_open and value == lo):
            low = f"above {lo:g}" if lo_open else f"from {lo:g}"
            raise argparse.ArgumentTypeError(f"must be {what} {low} to {hi:g}, not {text.strip()}")
        return value

    parse.__name__ = what
    return parse


# The shapes most options take.
positive = integer(1)
non_negative = integer(0)
seed = integer(0, 2 ** 32 - 1, "a seed")
fraction = number(0.0, 1.0, what="a fraction")
tokens = integer(1, 1_000_000, "a token count")
workers = integer(1, 1024, "a worker count")
port = integer(1, 65535, "a TCP port")
