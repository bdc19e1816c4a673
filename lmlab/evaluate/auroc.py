"""Area under the ROC curve of a score that should rank positives above negatives.

AUROC is the probability that a random positive scores higher than a random negative, a tie
counting one half: the Mann-Whitney U statistic over ``n_pos * n_neg``. With average ranks of the
pooled scores, ``U = sum of the positives' ranks - n_pos (n_pos + 1) / 2``, which equals the
trapezoidal area under the ROC curve (what ``sklearn.metrics.roc_auc_score`` computes), ties
included. 0.5 is chance; 1 ranks every positive above every negative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lmlab.errors import LmlabError


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Return the 1-based ranks of ``values``, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]  # each run of ties covers ranks starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat((starts + 1 + ends) / 2, ends - starts)
    return ranks


def auroc(labels: Sequence[int | bool], scores: Sequence[float]) -> float:
    """Return the AUROC of ``scores`` for binary ``labels`` (1/True = positive), ties as Mann-Whitney.

    Raises LmlabError when the lengths differ, a score is NaN, a label is not 0/1, or one class
    is missing (the area is then undefined).
    """
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise LmlabError(f"AUROC needs one score per label; got {y.size} labels and {s.size} scores")
    if np.isnan(s).any():
        raise LmlabError("AUROC got a NaN score; give every example a number")
    if not np.isin(y, (0, 1)).all():
        raise LmlabError("AUROC labels must be 0/1 (or False/True)")
    y = y.astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        which = "positive" if n_pos == 0 else "negative"
        raise LmlabError(f"AUROC is undefined without a {which} example ({n_pos} positive, "
                         f"{n_neg} negative); score a set that holds both")
    u = float(average_ranks(s)[y].sum()) - n_pos * (n_pos + 1) / 2  # a tie counts one half

    return u / (n_pos * n_neg)


def auroc_or_none(labels: Sequence[int | bool], scores: Sequence[float]) -> float | None:
    """Return :func:`auroc`, or None when one class is missing (a report's empty cell)."""
    y = list(labels)
    if not y or all(y) or not any(y):
        return None
    value = auroc(y, scores)
    return None if math.isnan(value) else value
