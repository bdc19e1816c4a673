"""The n-gram backoff model: scoring, sampling and estimation.

A trained model keeps, per order, the keys of :mod:`lmlab.ngram.counts`, log10
probabilities and log10 backoff weights: exactly what an ARPA file holds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from lmlab.errors import LmlabError
from lmlab.ngram.counts import (
    BOS,
    BOS_ID,
    EOS,
    EOS_ID,
    SMOOTHINGS,
    UNK,
    UNK_ID,
    NgramCounts,
    WordStream,
    corpus_from_ids,
    corpus_from_lines,
    count_ngrams,
    read_lines,
    sentence_positions,
    split_words,
)
from lmlab.ngram.smoothing import estimate

# The model module is the package's public face: the counting names are re-exported.
__all__ = ["BOS", "BOS_ID", "EOS", "EOS_ID", "SMOOTHINGS", "UNK", "UNK_ID", "NgramCounts", "WordStream",
           "corpus_from_ids", "corpus_from_lines", "count_ngrams", "read_lines", "sentence_positions",
           "split_words", "NgramModel", "Scores", "score_token_ids", "train_ngram"]


def _find(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Row of each query key in sorted ``keys``, -1 where absent."""
    if len(keys) == 0:
        return np.full(len(query), -1, dtype=np.int64)
    loc = np.searchsorted(keys, query)
    loc_c = np.minimum(loc, len(keys) - 1)
    return np.where(keys[loc_c] == query, loc_c, -1)


def _take(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[rows]`` where rows >= 0 and 0 elsewhere (also when ``values`` is empty)."""
    if len(values) == 0:
        return np.zeros(len(rows))
    return np.where(rows >= 0, values[np.maximum(rows, 0)], 0.0)


@dataclass
class Scores:
    """Per-token log10 probabilities of a scored stream and what they add up to."""

    logprob: np.ndarray  # log10 p of every predicted token (words and </s>)
    oov: np.ndarray  # bool: the token was not in the vocabulary (scored as <unk>)
    sentences: int

    @property
    def tokens(self) -> int:
        return len(self.logprob)

    def summary(self, n_bytes: int | None = None) -> dict:
        """Return KenLM-style figures: tokens, OOVs, total log10 prob, perplexity with and
        without OOVs, zero-probability tokens, and bits per byte when ``n_bytes`` is given."""
        total = float(self.logprob.sum())
        n_oov = int(self.oov.sum())
        kept = ~self.oov
        zero = int(np.isneginf(self.logprob).sum())
        out = {
            "sentences": self.sentences,
            "tokens": self.tokens,
            "oovs": n_oov,
            "zero_prob_tokens": zero,
            "logprob10": total,
            "perplexity": 10 ** (-total / self.tokens) if self.tokens else math.nan,
            "perplexity_excl_oov": (10 ** (-float(self.logprob[kept].sum()) / kept.sum())
                                    if kept.any() else math.nan),
            "nats_per_token": -total * math.log(10) / self.tokens if self.tokens else math.nan,
        }
        if n_bytes is not None:
            out["bytes"] = int(n_bytes)
            out["bits_per_byte"] = -total * math.log2(10) / n_bytes if n_bytes else math.nan
        return out


@dataclass
class NgramModel:
    """A backoff n-gram model: per order the sorted keys, log10 probabilities and (below the
    top order) log10 backoff weights, as an ARPA file stores them."""

    vocab: list[str]
    keys: list[np.ndarray]
    logprob: list[np.ndarray]
    backoff: list[np.ndarray]  # orders 1..N-1
    smoothing: str = ""
    info: dict = field(default_factory=dict)  # discounts and other estimation facts
    _index: dict[str, int] | None = field(default=None, repr=False)

    @property
    def order(self) -> int:
        return len(self.keys)

    @property
    def V(self) -> int:
        return len(self.vocab)

    @property
    def index(self) -> dict[str, int]:
        """word -> id."""
        if self._index is None:
            self._index = {w: i for i, w in enumerate(self.vocab)}
        return self._index

    def ngram_counts(self) -> list[int]:
        """Number of n-grams stored per order."""
        return [len(k) for k in self.keys]

    def ids(self, words: Iterable[str]) -> np.ndarray:
        """Map words to ids (unknown words -> <unk>); return an int64 array."""
        get = self.index.get
        return np.fromiter((get(w, UNK_ID) for w in words), dtype=np.int64)

    def score_stream(self, stream: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """log10 p(word | history) for every position of ``stream`` whose ``pos`` > 0.

        ``stream`` holds ids with each sentence starting at <s> (pos 0). Uses the ARPA
        backoff rule: the longest stored n-gram ending at the word, plus the backoff weights
        of the longer contexts. Returns one float per scored position, in order.
        """
        V, N = self.V, self.order
        idx = [stream.copy()]  # row of the k-gram ending at each position (unigram row = id)
        for k in range(2, N + 1):
            cur = np.full(len(stream), -1, dtype=np.int64)
            ends = np.flatnonzero(pos >= k - 1)
            ctx = idx[-1][ends - 1]
            ok = ctx >= 0
            cur[ends[ok]] = _find(self.keys[k - 1], ctx[ok] * V + stream[ends[ok]])
            idx.append(cur)
        target = np.flatnonzero(pos > 0)
        lp = self.logprob[0][stream[target]]
        longest = np.ones(len(target), dtype=np.int64)
        for k in range(2, N + 1):
            row = idx[k - 1][target]
            hit = row >= 0
            lp = np.where(hit, _take(self.logprob[k - 1], row), lp)
            longest = np.where(hit, k, longest)
        # The contexts of length c >= longest that exist were backed off from.
        for c in range(1, N):
            row = idx[c - 1][target - 1]
            use = (row >= 0) & (c >= longest) & (pos[target] >= c)
            lp = lp + np.where(use, _take(self.backoff[c - 1], row), 0.0)
        return lp

    def score_lines(self, lines: Iterable[str]) -> Scores:
        """Score text lines as KenLM does: each line from <s>, </s> counted, unknown words
        scored as <unk>. Returns Scores."""
        ids: list[int] = []
        get = self.index.get
        n = 0
        for line in lines:
            n += 1
            ids.append(BOS_ID)
            ids.extend(get(w, UNK_ID) for w in split_words(line))
            ids.append(EOS_ID)
        stream = np.asarray(ids, dtype=np.int64)
        pos = sentence_positions(stream)
        target = pos > 0
        return Scores(self.score_stream(stream, pos), stream[target] == UNK_ID, n)

    def distribution(self, context: list[int]) -> np.ndarray:
        """p(w | context) for every vocabulary id w (``<s>`` gets 0); return a float64 array.

        ``context`` is the id history, starting with <s> for a sentence start.
        """
        V, N = self.V, self.order
        lp = self.logprob[0].astype(np.float64).copy()
        hist = context[-(N - 1):] if N > 1 else []
        for j in range(1, len(hist) + 1):  # the context of length j: the last j words
            row = self._row(hist[-j:])
            if row < 0:  # a longer context contains this one, so it is absent too
                break
            lp = lp + self.backoff[j - 1][row]
            keys = self.keys[j]
            lo, hi = np.searchsorted(keys, [row * V, (row + 1) * V])
            lp[keys[lo:hi] % V] = self.logprob[j][lo:hi]
        p = np.power(10.0, lp)
        p[BOS_ID] = 0.0
        return p

    def _row(self, words: list[int]) -> int:
        """Row of the n-gram ``words`` in its order's table, -1 if absent."""
        row = words[0]
        for k in range(2, len(words) + 1):
            r = _find(self.keys[k - 1], np.array([row * self.V + words[k - 1]]))[0]
            if r < 0:
                return -1
            row = int(r)
        return row

    def generate(self, max_words: int, seed: int = 0) -> list[list[str]]:
        """Sample sentences word by word until ``max_words`` words; return them as word lists
        (the last one may be cut short)."""
        rng = np.random.default_rng(seed)
        sentences: list[list[str]] = []
        history = [BOS_ID]
        current: list[str] = []
        produced = 0
        while produced < max_words:
            p = self.distribution(history)
            total = p.sum()
            if not total > 0:
                raise LmlabError("the model gives no word a non-zero probability here; "
                                 "retrain it with a smoothing other than mle")
            w = int(rng.choice(self.V, p=p / total))
            if w == EOS_ID:
                sentences.append(current)
                current, history = [], [BOS_ID]
                continue
            current.append(self.vocab[w])
            history.append(w)
            produced += 1
        if current:
            sentences.append(current)
        return sentences


def score_token_ids(model: NgramModel, ids: np.ndarray, eot_id: int) -> Scores:
    """Score prepared-data token ids (words = decimal ids, ``eot_id`` ends a sentence, as
    :func:`corpus_from_ids` reads them): every sentence from <s>, its end-of-text as </s>,
    ids the model never saw as <unk>. Returns Scores."""
    ids = np.asarray(ids).astype(np.int64)
    table = np.full(max(int(ids.max(initial=0)), eot_id) + 1, UNK_ID, dtype=np.int64)
    for w, i in model.index.items():
        if w.isdigit() and int(w) < len(table):
            table[int(w)] = i
    table[eot_id] = EOS_ID
    mapped = table[ids]
    ends = np.flatnonzero(ids == eot_id)
    starts = np.concatenate([[0], ends + 1])
    starts = starts[starts < len(ids)]
    stream = np.insert(mapped, starts, BOS_ID)
    pos = sentence_positions(stream)
    scored = stream[pos > 0]
    return Scores(model.score_stream(stream, pos), scored == UNK_ID, len(starts))


def train_ngram(corpus: WordStream, order: int, smoothing: str = "mkn", *, k: float = 1.0, katz_k: int = 5,
                discount_fallback: bool = False, bar=None) -> NgramModel:
    """Estimate an n-gram model of ``order`` on ``corpus`` with ``smoothing``; return the model.

    Raises LmlabError for an order below 1, an unknown smoothing, or a corpus with fewer
    than two distinct words.
    """
    if order < 1:
        raise LmlabError(f"order must be at least 1 (got {order}); use e.g. --order 3")
    if smoothing not in SMOOTHINGS:
        raise LmlabError(f"unknown smoothing {smoothing!r}; choose one of {', '.join(SMOOTHINGS)}")
    n_types = len(corpus.vocab) - 3
    if corpus.words == 0:
        raise LmlabError("the training corpus has no words; give a non-empty text (one sentence per line)")
    if n_types < 2:
        raise LmlabError(f"the training corpus has only one distinct word ({corpus.vocab[3]!r}); "
                         "an n-gram model needs a corpus with at least two")
    counts = count_ngrams(corpus, order, bar=bar)
    logprob, backoff, info = estimate(counts, smoothing, k=k, katz_k=katz_k,
                                      discount_fallback=discount_fallback)
    return NgramModel(corpus.vocab, counts.keys, logprob, backoff, smoothing, info)
