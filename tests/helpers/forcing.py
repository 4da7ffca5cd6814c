"""Make greedy generation emit a given answer, so tests control what a VLM says."""

from __future__ import annotations

from transformers import LogitsProcessorList


class ForceTokens:
    """Emits ``ids`` in order (then repeats the last one)."""

    def __init__(self, ids):
        self.ids, self.step = list(ids), 0

    def __call__(self, input_ids, scores):
        token = self.ids[min(self.step, len(self.ids) - 1)]
        self.step += 1
        scores[:] = -1e9
        scores[:, token] = 0.0
        return scores


def force_text(processor, text: str) -> LogitsProcessorList:
    """Plain text (no special tokens) followed by ``<|im_end|>``."""
    return LogitsProcessorList([ForceTokens(processor.text_ids(text) + [processor.im_end])])
