"""Classification and regression metrics against hand-computed values and numpy/scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmlab.evaluate.classification import classification_metrics, confusion_matrix, regression_metrics


def test_confusion_accuracy_and_macro_f1_by_hand():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 1, 0, 1, 2, 2]
    r = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert r["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert r["n"] == 6 and r["accuracy"] == pytest.approx(4 / 6)
    # a: p 1, r 2/3 -> 0.8; b: p 1/2, r 1/2 -> 0.5; c: p 1/2, r 1 -> 2/3
    assert r["per_class"]["a"]["f1"] == pytest.approx(0.8)
    assert r["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert r["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert r["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert r["per_class"]["a"]["support"] == 3


def test_class_never_predicted_counts_zero_and_absent_class_is_left_out():
    r = classification_metrics([0, 0, 1, 1], [0, 0, 0, 0], ["neg", "pos", "unused"])
    assert r["per_class"]["pos"]["f1"] == 0.0
    # neg: p 1/2, r 1 -> 2/3; pos: 0; unused: neither present nor predicted, not averaged
    assert r["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert r["accuracy"] == 0.5


def test_empty_input_is_nan_not_an_error():
    r = classification_metrics([], [], ["a", "b"])
    assert r["n"] == 0 and math.isnan(r["accuracy"]) and math.isnan(r["macro_f1"])
    assert confusion_matrix([], [], 2) == [[0, 0], [0, 0]]


def test_regression_metrics_match_numpy():
    rng = np.random.default_rng(0)
    t = rng.normal(size=50)
    p = t + rng.normal(scale=0.5, size=50)
    r = regression_metrics(t.tolist(), p.tolist())
    assert r["mse"] == pytest.approx(float(np.mean((t - p) ** 2)))
    assert r["mae"] == pytest.approx(float(np.mean(np.abs(t - p))))
    assert r["pearson"] == pytest.approx(float(np.corrcoef(t, p)[0, 1]))
    assert math.isnan(regression_metrics([1.0, 2.0], [3.0, 3.0])["pearson"])
