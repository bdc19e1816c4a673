import numpy as np
import pytest

from lmlab.errors import LmlabError
from lmlab.evaluate.auroc import auroc, auroc_or_none, average_ranks

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed", range(5))
def test_equals_sklearn_on_random_scores(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=200)
    labels[:2] = [0, 1]
    scores = rng.normal(size=200) + labels * 0.7
    assert auroc(labels, scores) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_equals_sklearn_with_many_ties(seed):
    rng = np.random.default_rng(100 + seed)
    labels = rng.integers(0, 2, size=150)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(size=150) + labels * 0.5)  # a handful of distinct values
    assert auroc(labels, scores) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)


def test_average_ranks_equal_scipys_rankdata():
    from scipy.stats import rankdata

    rng = np.random.default_rng(7)
    for values in (rng.integers(0, 5, size=40).astype(float), rng.normal(size=25), np.zeros(3), np.ones(1)):
        assert np.array_equal(average_ranks(values), rankdata(values))


def test_hand_cases():
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auroc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert auroc([0, 1, 0, 1], [5, 5, 5, 5]) == 0.5  # all tied: chance
    # one positive at 0.5 against negatives 0.2 (below), 0.5 (tie: half), 0.9 (above): (1 + 0.5 + 0) / 3
    assert auroc([1, 0, 0, 0], [0.5, 0.2, 0.5, 0.9]) == pytest.approx(0.5)
    assert auroc([True, False], [1.0, 0.0]) == 1.0


def test_bad_input_is_refused():
    with pytest.raises(LmlabError, match="without a positive"):
        auroc([0, 0], [0.1, 0.2])
    with pytest.raises(LmlabError, match="one score per label"):
        auroc([0, 1], [0.1])
    with pytest.raises(LmlabError, match="NaN"):
        auroc([0, 1], [0.1, float("nan")])
    with pytest.raises(LmlabError, match="0/1"):
        auroc([0, 2], [0.1, 0.2])
    assert auroc_or_none([1, 1], [0.1, 0.2]) is None
    assert auroc_or_none([], []) is None
