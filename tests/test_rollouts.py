"""GRPO rollouts (vlmsam/train/rollouts.py): the sampler draws from the softmax it is given, a group's identical
prompts are run once, and ``benchmarks/bench_rollouts.py`` runs (its ratio is printed, not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlmsam.train.rollouts import sampler
from vlmsam.vlm.generation import encode_prefix, generate_many
from vlmsam.vlm.tiny import build_tiny_vlm

ROOT = Path(__file__).resolve().parents[1]


def test_the_sampler_draws_each_word_as_often_as_its_probability():
    probs = torch.tensor([0.0, 0.1, 0.0, 0.45, 0.3, 0.15, 0.0])
    scores = probs.log().expand(40_000, -1).clone()  # log 0 = -inf: those words, first, middle and last, never drawn
    torch.manual_seed(3)
    counts = torch.bincount(sampler(1.0)(scores), minlength=7).double()
    expected = probs.double() * len(scores)
    assert counts[[0, 2, 6]].sum() == 0
    chi2 = float((((counts - expected) ** 2)[expected > 0] / expected[expected > 0]).sum())
    assert chi2 < 18.5, chi2  # the 0.999 quantile of chi-square with 3 degrees of freedom is 16.3
    hot = sampler(2.0)(scores)  # a temperature flattens the distribution: the rare words come up more often
    assert (hot == 1).double().mean() > 0.12  # 0.1 at temperature 1


def test_a_word_of_probability_1e_8_is_drawn_when_the_uniform_number_lands_on_it(monkeypatch):
    """Word 1's share is the last 1e-8 of the cumulative sum. A float32 sum rounds 1 + 1e-8 to 1 and leaves it no
    share; the sampler's float64 sum keeps it, so a uniform number in that last sliver draws it."""
    import math

    scores = torch.tensor([[0.0, math.log(1e-8)]])
    monkeypatch.setattr(torch, "rand_like", lambda t: torch.full_like(t, 1 - 5e-9))
    assert int(sampler(1.0)(scores)[0]) == 1
    monkeypatch.setattr(torch, "rand_like", lambda t: torch.full_like(t, 0.5))
    assert int(sampler(1.0)(scores)[0]) == 0


def test_a_row_with_nothing_to_draw_is_an_error():
    with pytest.raises(ValueError, match="no word that can be drawn"):
        sampler(1.0)(torch.full((2, 5), -float("inf")))


def test_the_sampler_at_temperature_zero_is_the_argmax():
    scores = torch.randn(6, 50)
    assert torch.equal(sampler(0.0)(scores), scores.argmax(-1))


def test_identical_prompts_are_run_once_and_answer_as_each_alone():
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=1)
    from PIL import Image

    image = Image.new("RGB", (56, 56), (120, 30, 200))
    with torch.inference_mode():
        prefix = encode_prefix(model, processor, image, "cpu")
        ids = processor.encode([("the purple square", None)], image_inputs=(prefix.pixel_values, prefix.grid,
                                                                           prefix.n_tokens)).input_ids
        calls = []
        hook = model.model.language_model.register_forward_hook(lambda m, a, out: calls.append(out.last_hidden_state.shape))
        group = generate_many(model, prefix, [ids] * 4, stop_id=processor.im_end, pad_id=0, max_new_tokens=6)
        hook.remove()
        alone = generate_many(model, prefix, [ids], stop_id=processor.im_end, pad_id=0, max_new_tokens=6)[0]
    assert calls[0][:2] == (1, len(ids) - len(prefix.ids))  # the prompt's words ran for one row, then its cache was repeated
    assert len(calls) > 1 and all(c[:2] == (4, 1) for c in calls[1:])
    assert all(torch.equal(g.tokens, alone.tokens) for g in group)


def test_the_rollout_benchmark_runs_at_tiny_size():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_rollouts.py"), "--tiny", "--size", "56",
                          "--new-tokens", "6", "--dtype", "fp32"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("rollout_speedup=") and float(last.split("=")[1]) > 0
