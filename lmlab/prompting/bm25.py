"""BM25 search over a local corpus (Okapi BM25, Robertson et al.), scored exactly as
``rank_bm25.BM25Okapi`` scores: idf = ln(N - n + 0.5) - ln(n + 0.5), with the idf of terms in
more than half the documents (negative) replaced by ``epsilon`` times the mean idf, and

    score(D, Q) = sum over q in Q of idf(q) * f(q, D) (k1 + 1) / (f(q, D) + k1 (1 - b + b |D| / avgdl)).

Documents and queries are tokenised by :func:`words` (lower-cased word characters) unless the
caller passes token lists.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmlab.errors import LmlabError

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    """Return the lower-cased word tokens of ``text`` (BM25's default tokenisation)."""
    return _WORD.findall(text.lower())


@dataclass
class Hit:
    """One search result: the document's index in the corpus, its text and its BM25 score."""

    index: int
    text: str
    score: float


class BM25:
    """An Okapi BM25 index over ``documents`` (strings, or token lists when ``tokenized``)."""

    def __init__(self, documents: Sequence[str] | Sequence[Sequence[str]], k1: float = 1.5,
                 b: float = 0.75, epsilon: float = 0.25, tokenized: bool = False):
        if not documents:
            raise LmlabError("the search index has no documents; build it from a corpus with at least one "
                             "non-empty line")
        self.texts = [d if isinstance(d, str) else " ".join(d) for d in documents]
        docs = [list(d) if tokenized else words(d) for d in documents]
        if not any(docs):
            raise LmlabError("every document of the search index is empty (no words); build it from a "
                             "corpus with text in it")
        self.k1, self.b = k1, b
        self.lengths = np.array([len(d) for d in docs], dtype=np.float64)
        self.avgdl = float(self.lengths.mean())
        n_docs = len(docs)
        postings: dict[str, tuple[list[int], list[int]]] = {}  # term -> (documents, counts)
        for i, d in enumerate(docs):
            for w, c in Counter(d).items():
                where, counts = postings.setdefault(w, ([], []))
                where.append(i)
                counts.append(c)
        self.postings = {w: (np.array(i, dtype=np.int64), np.array(c, dtype=np.float64))
                         for w, (i, c) in postings.items()}
        self.idf = {w: math.log(n_docs - len(i) + 0.5) - math.log(len(i) + 0.5)
                    for w, (i, _) in postings.items()}
        floor = epsilon * sum(self.idf.values()) / len(self.idf)
        for w, v in self.idf.items():
            if v < 0:
                self.idf[w] = floor
        self._norm = self.k1 * (1 - self.b + self.b * self.lengths / self.avgdl)

    def __len__(self) -> int:
        return len(self.texts)

    def scores(self, query: str | Sequence[str]) -> np.ndarray:
        """Return the BM25 score of every document for ``query`` (a string or a token list)."""
        terms = words(query) if isinstance(query, str) else list(query)
        out = np.zeros(len(self.texts))
        for q in terms:  # a repeated query term counts each time, as in rank_bm25
            idf = self.idf.get(q)
            if not idf:
                continue
            where, f = self.postings[q]
            out[where] += idf * (f * (self.k1 + 1) / (f + self._norm[where]))
        return out

    def search(self, query: str | Sequence[str], k: int = 3) -> list[Hit]:
        """Return the ``k`` best documents for ``query``, best first (ties by corpus order); documents
        that share no term with the query are left out."""
        s = self.scores(query)
        order = np.argsort(-s, kind="stable")[:k]
        return [Hit(int(i), self.texts[i], float(s[i])) for i in order if s[i] > 0]
