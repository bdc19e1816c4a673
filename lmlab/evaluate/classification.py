"""Task metrics of classifiers and regressors: pure functions of true and predicted values.

Classification: accuracy, macro-F1 (the unweighted mean of the per-class F1; a class never
predicted and never present is left out, one never predicted but present scores 0), per-class
precision/recall/F1 and the confusion matrix (rows: true class, columns: predicted). Regression:
mean squared error, mean absolute error and Pearson's correlation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> list[list[int]]:
    """Return the ``num_labels x num_labels`` counts: ``m[t][p]`` = examples of class t predicted p."""
    m = [[0] * num_labels for _ in range(num_labels)]
    for t, p in zip(y_true, y_pred, strict=True):
        m[int(t)][int(p)] += 1
    return m


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int],
                           label_names: Sequence[str]) -> dict[str, Any]:
    """Return ``{n, accuracy, macro_f1, per_class: {name: {precision, recall, f1, support}},
    confusion, labels}`` for true and predicted class ids (indices into ``label_names``)."""
    k = len(label_names)
    m = confusion_matrix(y_true, y_pred, k)
    n = sum(map(sum, m))
    correct = sum(m[i][i] for i in range(k))
    per_class = {}
    f1s = []
    for i, name in enumerate(label_names):
        tp = m[i][i]
        predicted = sum(m[r][i] for r in range(k))
        support = sum(m[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        if support or predicted:
            f1s.append(f1)
    return {
        "n": n,
        "accuracy": correct / n if n else float("nan"),
        "macro_f1": sum(f1s) / len(f1s) if f1s else float("nan"),
        "per_class": per_class,
        "confusion": m,
        "labels": list(label_names),
    }


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """Return ``{n, mse, mae, pearson}`` of real-valued targets and predictions (Pearson is NaN when
    either side is constant)."""
    n = len(y_true)
    if n != len(y_pred):
        raise ValueError(f"{n} targets but {len(y_pred)} predictions")
    if n == 0:
        return {"n": 0, "mse": float("nan"), "mae": float("nan"), "pearson": float("nan")}
    mse = sum((t - p) ** 2 for t, p in zip(y_true, y_pred, strict=True)) / n
    mae = sum(abs(t - p) for t, p in zip(y_true, y_pred, strict=True)) / n
    mt, mp = sum(y_true) / n, sum(y_pred) / n
    cov = sum((t - mt) * (p - mp) for t, p in zip(y_true, y_pred, strict=True))
    vt = sum((t - mt) ** 2 for t in y_true)
    vp = sum((p - mp) ** 2 for p in y_pred)
    pearson = cov / math.sqrt(vt * vp) if vt > 0 and vp > 0 else float("nan")
    return {"n": n, "mse": mse, "mae": mae, "pearson": pearson}
