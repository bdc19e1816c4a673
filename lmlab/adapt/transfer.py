"""The transfer-learning lineage's baselines on a labelled corpus, before fine-tuning took over.

Each baseline turns a text into a fixed feature vector and fits a logistic regression
(:mod:`lmlab.adapt.logreg`) on the train split, picks its L2 strength on validation and
reports held-out (test) accuracy and macro-F1:

- ``ngram-logreg``: a bag of word n-grams (1..n, sublinear tf-idf, rows L2-normalised), the
  strong linear baseline of the pre-neural era (Wang & Manning 2012 style, without NB weights);
- ``w2v-avg``: the average of the text's word2vec vectors (word2vec.c era), from a vectors file
  or trained here with the project's word2vec on the corpus's train text (labelled and neutral
  sentences: the same unlabelled text ULMFiT's stage 2 reads);
- ``elmo``: ELMo features (Peters et al. 2018) from a run of the project's ELMo biLM: every
  layer's contextual vectors averaged over the text's tokens, side by side, so the linear model
  learns its own mix of the layers.

Any of them can also be scored on other labelled corpora's test splits without training on them
(domain transfer).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from lmlab.adapt.logreg import Features, select_logreg, standardize
from lmlab.data.labelled import LabelledCorpus
from lmlab.errors import LmlabError
from lmlab.evaluate.classification import classification_metrics
from lmlab.word2vec.vectors import WordVectors, split_words

METHODS = ("ngram-logreg", "w2v-avg", "elmo")


@dataclass
class BaselineResult:
    """How a baseline did: test accuracy and macro-F1 on its own corpus, the validation accuracy
    that picked the L2 strength, sizes, time, and the test figures of other corpora (``transfer``)."""

    method: str
    data: str
    accuracy: float
    macro_f1: float
    val_accuracy: float
    l2: float
    n_features: int
    n_train: int
    n_test: int
    seconds: float
    confusion: list[list[int]]
    labels: list[str]
    details: dict[str, Any] = field(default_factory=dict)
    transfer: dict[str, dict[str, float]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Return the figures as a JSON-ready dict (what ``--json`` prints)."""
        return asdict(self)


# ------------------------------------------------------------------ features

class NgramFeatures:
    """Bag of word n-grams (orders 1..``n``) seen in at least ``min_df`` training texts, as sublinear
    tf-idf (``1 + log tf`` times smoothed idf) with each row scaled to unit length."""

    def __init__(self, texts: Sequence[str], n: int = 2, min_df: int = 2):
        if n < 1 or min_df < 1:
            raise LmlabError(f"--ngram and --min-df must be at least 1 (got {n}, {min_df})")
        self.n = n
        df = Counter(g for t in texts for g in set(self._grams(t)))
        kept = sorted(g for g, c in df.items() if c >= min_df)
        if not kept:
            raise LmlabError(f"no n-gram occurs in {min_df} or more training texts; lower --min-df")
        self.vocab = {g: i for i, g in enumerate(kept)}
        self.idf = np.array([math.log((1 + len(texts)) / (1 + df[g])) + 1.0 for g in kept])

    def _grams(self, text: str) -> list[str]:
        words = split_words(text)
        return [" ".join(words[i:i + k]) for k in range(1, self.n + 1) for i in range(len(words) - k + 1)]

    def __call__(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """Return the ``(len(texts), vocabulary)`` sparse feature matrix."""
        rows, cols, vals = [], [], []
        for r, text in enumerate(texts):
            counts = Counter(self.vocab[g] for g in self._grams(text) if g in self.vocab)
            if not counts:
                continue
            idx = np.fromiter(counts, dtype=np.int64)
            v = (1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64))) * self.idf[idx]
            rows += [r] * len(idx)
            cols += idx.tolist()
            vals += (v / np.linalg.norm(v)).tolist()
        return sparse.csr_matrix((vals, (rows, cols)), shape=(len(texts), len(self.vocab)))


class AveragedVectors:
    """The mean of the word vectors of a text's words (a text with none known maps to zeros)."""

    def __init__(self, vectors: WordVectors):
        self.wv = vectors
        self.known = 0
        self.words = 0

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Return the ``(len(texts), dim)`` averaged vectors; counts word coverage as it goes."""
        out = np.zeros((len(texts), self.wv.dim), dtype=np.float64)
        for r, text in enumerate(texts):
            words = split_words(text)
            ids = [self.wv.index[w] for w in words if w in self.wv.index]
            self.words += len(words)
            self.known += len(ids)
            if ids:
                out[r] = self.wv.vectors[ids].mean(axis=0)
        return out

    def coverage(self) -> float:
        """The share of words seen so far that have a vector."""
        return self.known / self.words if self.words else 0.0


class ElmoFeatures:
    """ELMo features: each layer's contextual vectors (token layer included) averaged over the
    text's tokens, concatenated: ``(n_layer + 1) * 2 * d_model`` numbers per text."""

    def __init__(self, model: Any, tokenizer: Any):
        from lmlab.models.elmo import ELMo

        if not isinstance(model, ELMo) or tokenizer is None:
            raise LmlabError(f"--method elmo needs an ELMo run with its tokenizer, got a "
                             f"{type(model).__name__}; train one with 'lmlab pretrain --model elmo-small "
                             "--data PREPARED --out RUN'")
        self.model, self.tokenizer = model, tokenizer

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Return the ``(len(texts), features)`` matrix."""
        from lmlab.embed.contextual import contextual_embeddings

        rows = []
        for text in texts:
            layers = contextual_embeddings(self.model, self.tokenizer, text, layer_weights="all").vectors
            rows.append(layers.mean(dim=1).reshape(-1).double().numpy())
        return np.stack(rows)


# ------------------------------------------------------------------ fitting and scoring

def _split(corpus: LabelledCorpus, split: str) -> tuple[list[str], list[int]]:
    rows = corpus.examples(split, "classify")
    return [e.text for e in rows], [int(e.label) for e in rows]


def evaluate_features(method: str, corpus: LabelledCorpus, featurize: Callable[[Sequence[str]], Features],
                      *, dense: bool, eval_on: Sequence[LabelledCorpus] = (),
                      details: dict[str, Any] | None = None, started: float | None = None) -> BaselineResult:
    """Fit a logistic regression on ``featurize``'d train texts of ``corpus`` (L2 picked on validation),
    score it on the test split and on the test split of every corpus in ``eval_on``; return the result.

    ``dense`` features are standardised with the train statistics first.
    """
    started = time.perf_counter() if started is None else started
    corpus.check_task("classify")
    for other in eval_on:
        if list(other.label_names) != list(corpus.label_names):
            raise LmlabError(f"{other.name} has labels {other.label_names}, {corpus.name} "
                             f"{corpus.label_names}; domain transfer needs the same label set")
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = (_split(corpus, s) for s in ("train", "validation", "test"))
    if not te_y:
        raise LmlabError(f"{corpus.name} has no labelled test examples to score on")
    others = [_split(c, "test") for c in eval_on]
    feats = [featurize(x) for x in (tr_x, va_x, te_x, *(o[0] for o in others))]
    if dense:
        feats = standardize(*feats)
    model, val_acc = select_logreg((feats[0], tr_y), (feats[1], va_y), len(corpus.label_names))
    test = classification_metrics(te_y, model.predict(feats[2]).tolist(), corpus.label_names)
    transfer = {}
    for c, (_, y), x in zip(eval_on, others, feats[3:]):
        if not y:
            transfer[c.name] = {"n": 0}
            continue
        m = classification_metrics(y, model.predict(x).tolist(), c.label_names)
        transfer[c.name] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"]}
    return BaselineResult(
        method=method, data=corpus.name, accuracy=test["accuracy"], macro_f1=test["macro_f1"],
        val_accuracy=val_acc, l2=model.l2, n_features=int(feats[0].shape[1]), n_train=len(tr_y),
        n_test=len(te_y), seconds=round(time.perf_counter() - started, 3), confusion=test["confusion"],
        labels=list(corpus.label_names), details=details or {}, transfer=transfer)


def ngram_logreg(corpus: LabelledCorpus, n: int = 2, min_df: int = 2,
                 eval_on: Sequence[LabelledCorpus] = ()) -> BaselineResult:
    """Bag-of-n-grams logistic regression on ``corpus``; return its :class:`BaselineResult`."""
    started = time.perf_counter()
    featurize = NgramFeatures(_split(corpus, "train")[0], n=n, min_df=min_df)
    return evaluate_features("ngram-logreg", corpus, featurize, dense=False, eval_on=eval_on,
                             details={"ngram": n, "min_df": min_df}, started=started)


def train_vectors(corpus: LabelledCorpus, dim: int = 100, epochs: int = 5, min_count: int = 2,
                  seed: int = 0) -> WordVectors:
    """Train the project's skip-gram word2vec on every train-split text of ``corpus``; return the vectors."""
    from lmlab.word2vec.model import Word2VecParams, train_word2vec

    sentences = [w for t in corpus.texts("train") if (w := split_words(t))]
    params = Word2VecParams(dim=dim, epochs=epochs, min_count=min_count, seed=seed)
    return train_word2vec(sentences, params, progress=False)[0]


def w2v_avg(corpus: LabelledCorpus, vectors: WordVectors | None = None, *, dim: int = 100, epochs: int = 5,
            min_count: int = 2, seed: int = 0, eval_on: Sequence[LabelledCorpus] = ()) -> BaselineResult:
    """Averaged word2vec vectors + logistic regression on ``corpus``: ``vectors`` if given, else vectors
    trained on the corpus's train text (:func:`train_vectors`); return its :class:`BaselineResult`."""
    started = time.perf_counter()
    trained = vectors is None
    wv = train_vectors(corpus, dim, epochs, min_count, seed) if vectors is None else vectors
    featurize = AveragedVectors(wv)
    details: dict[str, Any] = {"vocab": len(wv), "dim": wv.dim, "trained_here": trained}
    result = evaluate_features("w2v-avg", corpus, featurize, dense=True, eval_on=eval_on, details=details,
                               started=started)
    result.details["word_coverage"] = round(featurize.coverage(), 4)
    return result


def elmo_logreg(corpus: LabelledCorpus, run: str | Path,
                eval_on: Sequence[LabelledCorpus] = ()) -> BaselineResult:
    """ELMo features of the biLM in run folder ``run`` + logistic regression on ``corpus``; return its
    :class:`BaselineResult`."""
    from lmlab.loader import load

    started = time.perf_counter()
    model, tokenizer = load(run)
    featurize = ElmoFeatures(model, tokenizer)
    details = {"run": str(run), "layers": model.config.n_layer + 1, "d_model": model.config.d_model}
    return evaluate_features("elmo", corpus, featurize, dense=True, eval_on=eval_on, details=details,
                             started=started)
