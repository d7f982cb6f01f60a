"""Sample-efficiency metrics of molecular optimization, as the PMO benchmark defines them
(Gao et al. 2022, "Sample efficiency matters", sec. 3): pure functions over the oracle's
scores in the order the oracle was called (one entry per distinct molecule)."""

from __future__ import annotations

from collections.abc import Sequence


def top_k_mean(scores: Sequence[float], k: int) -> float:
    """Mean of the k best scores so far (of all of them while there are fewer than k)."""
    if not scores:
        return 0.0
    best = sorted(scores, reverse=True)[:k]
    return sum(best) / len(best)


def top_k_auc(scores: Sequence[float], k: int, max_calls: int, every: int = 100) -> float:
    """Area under the curve of the top-k mean against oracle calls, read every ``every``
    calls with the trapezoid rule and divided by ``max_calls``, so 1 is a perfect score from
    the first call. A run that stops before ``max_calls`` keeps its last top-k mean for the
    rest of the budget (PMO's convention: stopping early earns nothing and loses nothing).
    Scores past ``max_calls`` are ignored."""
    if max_calls < 1:
        raise ValueError("max_calls must be >= 1")
    scores = list(scores)[:max_calls]
    area, previous, called = 0.0, 0.0, 0
    for end in range(every, len(scores) + 1, every):
        now = top_k_mean(scores[:end], k)
        area += every * (now + previous) / 2
        previous, called = now, end
    if called < len(scores):  # the last partial stretch
        now = top_k_mean(scores, k)
        area += (len(scores) - called) * (now + previous) / 2
        previous = now
    area += (max_calls - len(scores)) * previous
    return area / max_calls
