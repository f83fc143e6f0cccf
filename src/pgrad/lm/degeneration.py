"""Degeneration of sampled responses, measured from the token ids alone (no true score, no reward model).

A policy that exploits its reward model often writes the same few tokens over and over: the reward model
scores the pattern, the KL penalty is paid once, and the text stops carrying anything. Two measures see it:

- ``distinct_n``: over a batch of responses, the number of distinct n-grams divided by the number of
  n-grams, pooled over the batch (Li et al. 2016's distinct-n). 1.0 when no n-gram repeats anywhere in
  the batch; it falls toward 1 / (number of n-grams) when every response is one n-gram repeated.
- ``repetition_rate``: within each response, the share of its n-grams that already occurred earlier in the
  same response, averaged over responses that have at least one n-gram. 0.0 for responses without repeats,
  toward 1.0 for a response that loops.

Both read only the response tokens where ``mask`` is 1 (padding and what comes after the EOS are not text).
A response shorter than n contributes no n-gram; a batch with no n-gram at all gives ``nan`` (nothing to
measure), which the alert rules skip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor


def response_tokens(response: Tensor, mask: Tensor) -> list[list[int]]:
    """Each row's tokens where ``mask`` is nonzero, in order (``response``, ``mask``: (batch, length))."""
    if response.shape != mask.shape or response.dim() != 2:
        raise ValueError(f"response and mask must be (batch, length) of one shape; got {response.shape}, {mask.shape}")
    ids, keep = response.tolist(), (mask != 0).tolist()
    return [
        [token for token, kept in zip(row, row_keep, strict=True) if kept]
        for row, row_keep in zip(ids, keep, strict=True)
    ]


def ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """The n-grams of ``tokens`` in order (``len(tokens) - n + 1`` of them; none when shorter than n)."""
    if n < 1:
        raise ValueError(f"n must be at least 1; got {n}")
    return [tuple(tokens[start : start + n]) for start in range(len(tokens) - n + 1)]


def distinct_n(responses: Sequence[Sequence[int]], n: int) -> float:
    """distinct-n = |distinct n-grams in the batch| / |n-grams in the batch|; nan when there is no n-gram."""
    pooled = [gram for tokens in responses for gram in ngrams(tokens, n)]
    return len(set(pooled)) / len(pooled) if pooled else math.nan


def repetition_rate(responses: Sequence[Sequence[int]], n: int) -> float:
    """Mean over responses (those with an n-gram) of: the n-grams seen earlier in the same response / its n-grams."""
    rates = []
    for tokens in responses:
        grams = ngrams(tokens, n)
        if grams:
            rates.append((len(grams) - len(set(grams))) / len(grams))
    return sum(rates) / len(rates) if rates else math.nan


def degeneration_metrics(response: Tensor, mask: Tensor, n: int = 2, prefix: str = "lm") -> dict[str, float]:
    """``{prefix}/distinct_{n}`` and ``{prefix}/repetition_{n}`` of one batch of sampled responses."""
    tokens = response_tokens(response.cpu(), mask.cpu())
    return {f"{prefix}/distinct_{n}": distinct_n(tokens, n), f"{prefix}/repetition_{n}": repetition_rate(tokens, n)}
