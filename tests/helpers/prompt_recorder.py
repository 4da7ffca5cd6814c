"""A logits processor that records the prompt a VLM was given and changes nothing."""

from __future__ import annotations


class RecordPrompt:
    """Keeps the token ids the model was shown at its first generation step (``prompt``: ``(k, L)``,
    one row per request), so a test can read what a segmenter actually put in the VLM's context."""

    def __init__(self):
        self.prompt = None

    def __call__(self, input_ids, scores):
        if self.prompt is None:
            self.prompt = input_ids.clone()
        return scores
