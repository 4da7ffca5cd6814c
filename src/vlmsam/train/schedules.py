"""Learning-rate schedules, as ``LambdaLR`` multipliers of the base rate."""

from __future__ import annotations

import math


def lr_lambda(warmup: int, total: int):
    """Linear warm-up to the base rate, then linear decay to zero at the last step (LISA's)."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def warmup_cosine(warmup: int, total: int):
    """Linear warm-up, then cosine decay to zero at ``total`` (the pre-training stages)."""
    def f(step: int) -> float:
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    return f
