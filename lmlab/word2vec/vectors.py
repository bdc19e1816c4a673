"""Word vectors: the word2vec text format (read and write) and nearest-neighbour queries.

The text format is word2vec.c's and gensim's interchange format: a header line
``count dim``, then one line per word, ``word v1 ... vdim``, most frequent word first.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmlab.errors import LmlabError
from lmlab.fileio import atomic_path

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


def split_words(text: str, lowercase: bool = True) -> list[str]:
    """Return the words of ``text``: runs of letters and digits, with inner apostrophes (``don't``)."""
    return _WORD.findall(text.lower() if lowercase else text)


@dataclass
class WordVectors:
    """Words and their vectors (float32, one row per word, in the given word order)."""

    words: list[str]
    vectors: np.ndarray
    index: dict[str, int] = field(init=False, repr=False)
    _unit: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.words):
            raise ValueError(f"vectors of shape {self.vectors.shape} do not match {len(self.words)} words")
        self.index = {}
        for i, w in enumerate(self.words):
            self.index.setdefault(w, i)

    @property
    def dim(self) -> int:
        """The vector dimension."""
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def vector(self, word: str) -> np.ndarray:
        """Return the vector of ``word``; raise LmlabError if it is not in the vocabulary."""
        return self.vectors[self._lookup(word)]

    def unit_vectors(self) -> np.ndarray:
        """Return the vectors scaled to unit length (zero vectors stay zero); cached."""
        if self._unit is None:
            norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
            self._unit = (self.vectors / np.where(norms > 0, norms, 1)).astype(np.float32)
        return self._unit

    def similarity(self, a: str, b: str) -> float:
        """Return the cosine similarity of the vectors of words ``a`` and ``b``."""
        unit = self.unit_vectors()
        return float(unit[self._lookup(a)] @ unit[self._lookup(b)])

    def most_similar(self, word: str, k: int = 10) -> list[tuple[str, float]]:
        """Return the ``k`` words nearest to ``word`` by cosine similarity, best first, as (word, cos)."""
        if k < 1:
            raise LmlabError(f"k must be at least 1 (got {k})")
        i = self._lookup(word)
        unit = self.unit_vectors()
        sims = unit @ unit[i]
        sims[i] = -np.inf
        k = min(k, len(self.words) - 1)
        if k <= 0:
            return []
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
        return [(self.words[j], float(sims[j])) for j in top]

    def _lookup(self, word: str) -> int:
        i = self.index.get(word)
        if i is None:
            hint = ""
            if word.lower() in self.index and word.lower() != word:
                hint = f" (did you mean {word.lower()!r}? the vocabulary is lowercased)"
            raise LmlabError(f"word {word!r} is not in the vocabulary of {len(self.words)} words{hint}; "
                             "pick another word or train with a lower --min-count")
        return i


def save_word2vec_text(path: str | os.PathLike, wv: WordVectors) -> None:
    """Atomically write ``wv`` to ``path`` in word2vec text format (9 significant digits: exact float32)."""
    bad = next((w for w in wv.words if not w or any(c.isspace() for c in w)), None)
    if bad is not None:
        raise LmlabError(f"word {bad!r} is empty or contains whitespace, which the word2vec text format "
                         "cannot store; tokenise on whitespace")
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{len(wv.words)} {wv.dim}\n")
        row_fmt = " ".join(["%.9g"] * wv.dim)
        for word, row in zip(wv.words, wv.vectors.tolist()):
            f.write(word + " " + row_fmt % tuple(row) + "\n")


def load_word2vec_text(path: str | os.PathLike) -> WordVectors:
    """Read a word2vec text-format file; return its WordVectors.

    Raises LmlabError naming the line for a bad header, a line with the wrong number of
    values, a value that is not a number, or a count that does not match the header.
    """
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"vectors file {path} does not exist; check the path, or train one with "
                         f"'lmlab word2vec train --out {path}'")
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            lines = f.read().splitlines()
        except UnicodeDecodeError as e:
            raise LmlabError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); "
                             "is it a binary word2vec file? convert it to text format") from None
    header = lines[0].split() if lines else []
    if len(header) != 2 or not all(h.isdigit() for h in header):
        raise LmlabError(f"{path}:1: expected the header 'count dim', found {lines[0][:60]!r}" if lines else
                         f"{path} is empty; expected word2vec text format ('count dim' header, then vectors)")
    count, dim = int(header[0]), int(header[1])
    if dim < 1:
        raise LmlabError(f"{path}:1: the header gives dimension {dim}; it must be at least 1")
    body = [(n, line) for n, line in enumerate(lines[1:], start=2) if line.strip()]
    if len(body) != count:
        raise LmlabError(f"{path}: the header announces {count} vectors but the file has {len(body)}; "
                         "the file is truncated or its header is wrong")
    words: list[str] = []
    vectors = np.empty((count, dim), dtype=np.float32)
    for row, (lineno, line) in enumerate(body):
        parts = line.rstrip().split(" ")
        if len(parts) != dim + 1:
            raise LmlabError(f"{path}:{lineno}: expected a word and {dim} numbers, found {len(parts) - 1} "
                             "numbers; the file is damaged or mixes vectors of different sizes")
        try:
            vectors[row] = np.array(parts[1:], dtype=np.float32)
        except ValueError:
            raise LmlabError(f"{path}:{lineno}: a value for {parts[0]!r} is not a number; "
                             "the file is damaged") from None
        words.append(parts[0])
    if not np.isfinite(vectors).all():
        row = int(np.nonzero(~np.isfinite(vectors).all(axis=1))[0][0])
        raise LmlabError(f"{path}:{body[row][0]}: the vector of {words[row]!r} holds NaN or infinity; "
                         "retrain with a lower --lr")
    return WordVectors(words, vectors)
