"""Multinomial logistic regression with an L2 penalty, fitted by L-BFGS: the linear classifier of
the transfer-lineage baselines (bag of n-grams, averaged word vectors, ELMo features).

Features may be a dense array or a SciPy sparse matrix. The penalty strength is picked on the
validation split from a fixed grid, so test examples never steer a choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, sparse

from lmlab.errors import LmlabError

# L2 strengths tried on validation (loss = mean cross-entropy + l2/2 * |W|^2; sklearn's C = 1 / (n * l2)).
L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)

Features = np.ndarray | sparse.spmatrix | sparse.sparray


@dataclass
class LogisticRegression:
    """A fitted multinomial logistic regression: weights ``(d, K)`` and biases ``(K,)``."""

    weights: np.ndarray
    bias: np.ndarray
    l2: float

    def logits(self, x: Features) -> np.ndarray:
        """Return the class scores ``(n, K)`` of features ``x (n, d)``."""
        return np.asarray(x @ self.weights) + self.bias

    def predict(self, x: Features) -> np.ndarray:
        """Return the most likely class id of each row of ``x``."""
        return self.logits(x).argmax(axis=1)


def _loss_and_grad(theta: np.ndarray, x: Features, onehot: np.ndarray, l2: float) -> tuple[float, np.ndarray]:
    n, k = onehot.shape
    d = x.shape[1]
    w, b = theta[: d * k].reshape(d, k), theta[d * k:]
    z = np.asarray(x @ w) + b
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -(onehot * log_p).sum() / n + 0.5 * l2 * float((w * w).sum())
    g = (np.exp(log_p) - onehot) / n
    grad_w = np.asarray(x.T @ g) + l2 * w
    return loss, np.concatenate([grad_w.ravel(), g.sum(axis=0)])


def fit_logreg(x: Features, y: Sequence[int], num_labels: int, l2: float,
               max_iter: int = 500) -> LogisticRegression:
    """Fit a logistic regression of labels ``y`` on features ``x`` with L2 strength ``l2`` (from zero
    weights, so the fit is deterministic); return it."""
    y = np.asarray(y, dtype=np.int64)
    if x.shape[0] != len(y) or len(y) == 0:
        raise LmlabError(f"logistic regression needs one label per feature row (got {x.shape[0]} rows, "
                         f"{len(y)} labels); give a non-empty training split")
    onehot = np.eye(num_labels)[y]
    d = x.shape[1]
    res = optimize.minimize(_loss_and_grad, np.zeros(d * num_labels + num_labels), args=(x, onehot, l2),
                            jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    theta = res.x
    return LogisticRegression(theta[: d * num_labels].reshape(d, num_labels), theta[d * num_labels:], l2)


def select_logreg(train: tuple[Features, Sequence[int]], validation: tuple[Features, Sequence[int]],
                  num_labels: int, grid: Sequence[float] = L2_GRID) -> tuple[LogisticRegression, float]:
    """Fit one model per L2 strength of ``grid`` on ``train``; return the one with the best validation
    accuracy (the stronger penalty on a tie) and that accuracy."""
    if not grid:
        raise ValueError("the L2 grid is empty")
    x_val, y_val = validation
    y_val = np.asarray(y_val)
    best: tuple[LogisticRegression, float] = (None, -1.0)  # type: ignore[assignment]
    for l2 in sorted(grid, reverse=True):
        model = fit_logreg(*train, num_labels, l2)
        acc = float((model.predict(x_val) == y_val).mean()) if len(y_val) else 0.0
        if acc > best[1]:
            best = (model, acc)
    return best


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Return ``train`` and ``others`` shifted and scaled by the train columns' mean and deviation
    (a constant column is only shifted)."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std == 0] = 1.0
    return [(a - mean) / std for a in (train, *others)]
