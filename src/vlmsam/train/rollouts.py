"""GRPO rollouts that share the image: one prefix per group of completions, not one per completion.

trl's own generation runs each of a group's G completions from the start: G copies of the image through the
vision tower and G prefills of the same prompt. Here a group (the G consecutive prompts trl's sampler
repeats) is encoded once (:func:`~vlmsam.vlm.generation.encode_prefix`: vision features and the key/value
cache of the prefix) and its G completions are sampled together from that cache
(:func:`~vlmsam.vlm.generation.generate_many` with a sampler); ``benchmarks/bench_rollouts.py`` measures
the difference. Sampling uses torch's global generator, which trl seeds and restores on resume.
"""

from __future__ import annotations

import torch

from vlmsam.vlm.generation import encode_prefix, generate_many


def sampler(temperature: float):
    """Draw each row's next token from its softmax at ``temperature`` (0: the argmax), by the inverse of its
    cumulative distribution: one uniform number per row. ``torch.multinomial`` draws one exponential number
    per word instead (151,936 a row for Qwen2.5-VL), which on a CPU was a quarter of a rollout's decode time.
    The sums are in float64, so even a word of probability 1e-12 keeps its share, and a word of probability 0
    is never drawn."""
    def draw(scores: torch.Tensor) -> torch.Tensor:
        if temperature <= 0:
            return scores.argmax(-1)
        cdf = torch.softmax(scores.float() / temperature, dim=-1).double().cumsum(-1)
        total = cdf[:, -1:]
        if not torch.isfinite(total).all() or (total <= 0).any():
            raise ValueError("a row of scores has no word that can be drawn (all -inf or NaN)")
        # u < total even after rounding, so some word's cumulative share passes it: the first such word is drawn
        u = torch.minimum(torch.rand_like(total) * total, torch.nextafter(total, torch.zeros_like(total)))
        return torch.searchsorted(cdf, u, right=True)[:, 0]

    return draw


def image_and_text(prompt) -> tuple[object, str]:
    """The image and the user text of a one-turn conversation as trl hands it (content blocks)."""
    image, texts = None, []
    for message in prompt:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content or []:
            if part.get("type") == "image":
                image = part.get("image")
            elif part.get("type") == "text":
                texts.append(part.get("text", ""))
    return image, "".join(texts)


def policy_model(trainer):
    """The policy as a transformers model (a PEFT model's base, its adapters active)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def vision_token_ids(processor) -> list[int]:
    """Tokens a completion must never hold: an image placeholder drawn by the policy would not match the
    image's features when trl runs the model over prompt and completion."""
    tok = processor.tokenizer
    names = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")
    ids = {tok.convert_tokens_to_ids(n) for n in names}
    return sorted(i for i in ids if i is not None and i != tok.unk_token_id)


def shared_rollouts(model, processor, prompts: list, group: int, *, max_new_tokens: int, temperature: float,
                    draw=None) -> dict:
    """``prompt_ids``, ``completion_ids`` (ending with ``<|im_end|>`` where the answer ended) for ``prompts``,
    whose consecutive runs of ``group`` are one request each; ``draw`` replaces the temperature sampler.
    The vision tokens are never drawn (:func:`vision_token_ids`)."""
    device = next(model.parameters()).device
    prompt_ids, completion_ids = [], []
    banned = torch.tensor(vision_token_ids(processor), dtype=torch.long)
    base_draw = draw or sampler(temperature)

    def draw(scores):
        scores[:, banned.to(scores.device)] = -float("inf")
        return base_draw(scores)

    for start in range(0, len(prompts), group):
        image, text = image_and_text(prompts[start])
        n = len(prompts[start:start + group])
        with torch.inference_mode():
            prefix = encode_prefix(model, processor, image, device)
            ids = processor.encode([(text, None)], image_inputs=(prefix.pixel_values, prefix.grid, prefix.n_tokens)).input_ids
            answers = generate_many(model, prefix, [ids] * n, stop_id=processor.im_end,
                                    pad_id=processor.tokenizer.pad_token_id or 0, max_new_tokens=max_new_tokens, sampler=draw)
        for a in answers:
            tokens = a.tokens.tolist()
            prompt_ids.append(ids.tolist())
            completion_ids.append(tokens + [processor.im_end] if len(tokens) < max_new_tokens else tokens)
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}


class SharedPrefixRollouts:
    """trl's ``rollout_func`` (``grpo.rollouts: shared``)."""

    def __init__(self, processor, grpo):
        self.processor, self.grpo = processor, grpo

    def __call__(self, prompts: list, trainer) -> dict:
        model = policy_model(trainer)
        was_training = model.training
        model.eval()
        try:
            return shared_rollouts(model, self.processor, prompts, trainer.num_generations,
                                   max_new_tokens=self.grpo.max_completion_length, temperature=self.grpo.temperature)
        finally:
            model.train(was_training)
