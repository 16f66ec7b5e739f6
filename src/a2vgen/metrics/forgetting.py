"""Forgetting of per-class scores over the rounds of a class-incremental run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def forgetting(history: Mapping[str, Sequence[tuple[int, float]]], higher_is_better: bool = True) -> dict[str, float]:
    """Each class's drop from its best score to its latest one (0 when the latest is the best).

    Args:
        history: class -> ``(round, score)`` pairs, in any order; classes without scores are skipped.
        higher_is_better: ``False`` for scores such as KID, where the best is the lowest.
    """
    drops = {}
    for cls, scores in history.items():
        if not scores:
            continue
        values = [score for _, score in sorted(scores, key=lambda pair: pair[0])]
        best = max(values) if higher_is_better else min(values)
        drops[cls] = (best - values[-1]) if higher_is_better else (values[-1] - best)
    return drops
