"""WordStream ids and vectorised n-gram counting.

A word stream is one flat array of word ids in which every sentence reads ``<s> w1 ... wn </s>``
(one ``<s>``, as KenLM counts). The n-grams of order k are the windows of length k that
stay inside one sentence. Each order is a table of unique n-grams sorted by an integer
key ``context_index * V + word``, where ``context_index`` is the row of the n-gram's first
k-1 words in the table of order k-1 (unigrams: key = word id). Keys are therefore in
lexicographic order of the word ids, fit in int64 for any order, and one ``np.unique``
per order counts everything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmlab.errors import LmlabError

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
SMOOTHINGS = ("mle", "add-k", "good-turing", "katz", "witten-bell", "kn", "mkn")
# lmplz splits words on these bytes only (not on other Unicode spaces).
_WORD_SPLIT = re.compile(r"[ \t\r\0]+")
_TO_SPACE = str.maketrans({"\t": " ", "\r": " ", "\0": " "})
_GAP, _END, _SPECIAL = -1, -2, -3  # token codes while reading text


def split_words(line: str) -> list[str]:
    """Split one line into words the way KenLM does (space, tab, CR, NUL); return the words."""
    return [w for w in _WORD_SPLIT.split(line) if w]


def read_lines(path) -> list[str]:
    """Read a UTF-8 text file as lines (split on newline only); raise LmlabError if unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LmlabError(f"text file {path} does not exist; check the path") from None
    except UnicodeDecodeError as e:
        raise LmlabError(f"{path} is not UTF-8 text ({e}); convert it to UTF-8") from None
    except OSError as e:
        raise LmlabError(f"cannot read {path} ({e.strerror}); give a readable text file") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


@dataclass
class WordStream:
    """Sentences as one id stream (``<s> w.. </s>`` each) and the id -> word vocabulary."""

    vocab: list[str]
    stream: np.ndarray  # int64 word ids
    pos: np.ndarray  # position of each id in its sentence; 0 at <s>
    skipped_specials: int = 0  # <s>, </s>, <unk> found in the text and dropped (as lmplz --skip_symbols)

    @property
    def sentences(self) -> int:
        return int((self.pos == 0).sum())

    @property
    def words(self) -> int:
        """Word tokens, not counting <s> or </s>."""
        return len(self.stream) - 2 * self.sentences


def sentence_positions(stream: np.ndarray) -> np.ndarray:
    """Position of every id in its sentence, given that each sentence starts with <s>."""
    idx = np.arange(len(stream), dtype=np.int64)
    starts = np.where(stream == BOS_ID, idx, 0)
    return idx - np.maximum.accumulate(starts)


def corpus_from_lines(lines: Iterable[str]) -> WordStream:
    """Build a WordStream from text lines (one sentence per line, words separated by spaces).

    Every line is a sentence, empty lines included (as lmplz). The words ``<s>``, ``</s>``
    and ``<unk>`` in the text are dropped like whitespace, as lmplz ``--skip_symbols`` does.
    Returns the WordStream; word ids are given in order of first appearance after the three
    special words.
    """
    lines = list(lines)
    if not lines:
        return WordStream([UNK, BOS, EOS], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    # One pass over all tokens: "\n" ends a sentence, "" is the gap between two delimiters.
    tokens = ("\n".join(lines) + "\n").translate(_TO_SPACE).replace("\n", " \n ").split(" ")
    codes = {"": _GAP, "\n": _END, UNK: _SPECIAL, BOS: _SPECIAL, EOS: _SPECIAL}
    first_word = len(codes)
    arr = np.fromiter((codes.setdefault(w, len(codes)) for w in tokens), dtype=np.int64, count=len(tokens))
    skipped = int((arr == _SPECIAL).sum())
    arr = arr[(arr != _GAP) & (arr != _SPECIAL)]
    ids = np.where(arr == _END, EOS_ID, arr - first_word + 3)
    ends = np.flatnonzero(ids == EOS_ID)
    stream = np.insert(ids, np.concatenate([[0], ends[:-1] + 1]), BOS_ID)
    vocab = [UNK, BOS, EOS] + [w for w, i in codes.items() if i >= first_word]
    return WordStream(vocab, stream, sentence_positions(stream), skipped)


def corpus_from_ids(ids: np.ndarray, eot_id: int) -> WordStream:
    """Build a WordStream from prepared-data token ids: each id is a word (its decimal string),
    ``eot_id`` ends a sentence (becomes ``</s>``). Returns the WordStream."""
    ids = np.asarray(ids).astype(np.int64)
    if len(ids) and ids[-1] != eot_id:
        ids = np.append(ids, eot_id)
    words = ids[ids != eot_id]
    uniq, first = np.unique(words, return_index=True)
    order = uniq[np.argsort(first)]  # ids in order of first appearance
    table = np.full(int(max(ids.max(initial=0), eot_id)) + 1, -1, dtype=np.int64)
    table[order] = np.arange(3, 3 + len(order))
    table[eot_id] = EOS_ID
    mapped = table[ids]
    ends = np.flatnonzero(ids == eot_id)
    starts = np.concatenate([[0], ends[:-1] + 1]) if len(ends) else np.zeros(0, dtype=np.int64)
    stream = np.insert(mapped, starts, BOS_ID)
    vocab = [UNK, BOS, EOS] + [str(int(i)) for i in order]
    return WordStream(vocab, stream, sentence_positions(stream))


@dataclass
class NgramCounts:
    """Unique n-grams of every order with their raw counts.

    ``keys[k-1]`` is the sorted int64 key array of order k (``ctx * V + word``;
    unigrams: every vocabulary id), ``counts[k-1]`` the raw counts, ``suffix[k-1]`` (k >= 2)
    the row of the n-gram without its first word in order k-1, ``first[k-1]`` its first word.
    """

    vocab: list[str]
    keys: list[np.ndarray]
    counts: list[np.ndarray]
    suffix: list[np.ndarray]
    first: list[np.ndarray]

    @property
    def order(self) -> int:
        return len(self.keys)

    @property
    def V(self) -> int:
        return len(self.vocab)


def count_ngrams(corpus: WordStream, order: int, bar=None) -> NgramCounts:
    """Count every n-gram of orders 1..``order`` in ``corpus`` with numpy; return NgramCounts.

    ``bar`` (optional tqdm) is advanced once per order.
    """
    V = len(corpus.vocab)
    s, pos = corpus.stream, corpus.pos
    keys = [np.arange(V, dtype=np.int64)]
    counts = [np.bincount(s, minlength=V).astype(np.int64)]
    suffix = [np.zeros(0, dtype=np.int64)]
    first = [np.arange(V, dtype=np.int64)]
    idx = s.copy()  # row of the (k-1)-gram ending at each position; -1 if none
    if bar is not None:
        bar.update(1)
    for k in range(2, order + 1):
        ends = np.flatnonzero(pos >= k - 1)
        key = idx[ends - 1] * V + s[ends]
        uniq, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
        suf = np.empty(len(uniq), dtype=np.int64)
        suf[inv] = idx[ends]
        new_idx = np.full(len(s), -1, dtype=np.int64)
        new_idx[ends] = inv
        keys.append(uniq)
        counts.append(cnt.astype(np.int64))
        suffix.append(suf)
        first.append(first[-1][uniq // V])
        idx = new_idx
        if bar is not None:
            bar.update(1)
    return NgramCounts(corpus.vocab, keys, counts, suffix, first)
