"""The language loss of a fine-tuned VLM's answers: next-token CE with each answer's first token weighted
(the decision) and, for answers that write numbers, ordinal targets over the number tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def answer_starts(labels: torch.Tensor) -> torch.Tensor:
    """``(..., L - 1)`` bool: position ``j`` is the token that predicts the first token of an answer
    (an answer begins where the prompt before it ends). ``labels``: -100 outside answers."""
    answered = labels != -100
    return answered[..., 1:] & ~answered[..., :-1]


def answer_weighted_ce(logits: torch.Tensor, labels: torch.Tensor, start_weight: float,
                       numbers: tuple[torch.Tensor, torch.Tensor] | None = None, sigma: float = 0.0,
                       openers: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token CE over the labelled tokens, each answer's first token weighted ``start_weight``
    and the rest 1 (a weighted mean; ``start_weight=1`` is the usual CE). ``labels`` are unshifted,
    -100 outside answers, as the causal-LM loss takes them.

    ``numbers = (token_ids, values)`` and ``sigma > 0``: where the target is a whole-number token, the
    target distribution is a Gaussian of width ``sigma`` over the number tokens around it instead of
    one-hot, so 37 for 38 costs less than 90 for 38 and every number token near the answer learns
    from it (coordinates are ordinal; a one-hot CE treats 247 coordinate tokens as unrelated words).
    ``openers``: only numbers right after one of these token ids (``[`` or ``,``: a list's values, not
    the ``2`` of ``bbox_2d``)."""
    target = labels[:, 1:]
    flat = logits[:, :-1].flatten(0, 1).float()
    ce = F.cross_entropy(flat, target.flatten(), ignore_index=-100, reduction="none")
    if numbers is not None and sigma > 0:
        ids, values = numbers
        is_number = torch.isin(target, ids)
        if openers is not None:
            is_number &= torch.isin(labels[:, :-1].clamp_min(0), openers) & (labels[:, :-1] != -100)
        where = torch.nonzero(is_number.flatten())[:, 0]
        if len(where):
            wanted = values[torch.searchsorted(ids, target.flatten()[where])]  # ids are sorted
            soft = F.softmax(-((values[None].float() - wanted[:, None].float()) ** 2) / (2 * sigma ** 2), dim=-1)
            log_p = F.log_softmax(flat[where], dim=-1)[:, ids]
            ce = ce.index_put((where,), -(soft * log_p).sum(-1))
    weight = (target != -100).float() + (start_weight - 1.0) * answer_starts(labels).float()
    return (ce * weight.flatten()).sum() / weight.sum().clamp_min(1e-8)
