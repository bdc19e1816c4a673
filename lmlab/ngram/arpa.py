"""ARPA n-gram files: write an NgramModel and read one back (from lmlab, KenLM lmplz, SRILM).

Layout::

    \\data\\
    ngram 1=N1
    ...
    \\1-grams:
    log10p<TAB>word<TAB>log10backoff
    ...
    \\N-grams:
    log10p<TAB>w1 ... wN
    \\end\\

A log10 of zero probability is written as -99 (SRILM's convention) and read back as
-inf. Backoff weights are written for every n-gram below the top order (0 when it is
not a context), as lmplz does.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmlab.errors import LmlabError
from lmlab.fileio import atomic_path
from lmlab.ngram.model import BOS, EOS, UNK, NgramModel

LOG_ZERO = -99.0
UNK_MISSING_LOGPROB = -100.0  # what KenLM assigns <unk> when a model lacks it
_SPLIT = re.compile(r"[ \t\r]+")
_HEADER = re.compile(r"^\\(\d+)-grams:$")
_COUNT = re.compile(r"^ngram\s+(\d+)\s*=\s*(\d+)$")


def _fmt(x: np.ndarray) -> list[str]:
    """Format log10 values with 7 significant digits, zero probability as -99."""
    return [f"{v:.7g}" for v in np.maximum(x, LOG_ZERO).tolist()]


def _zero_to_inf(x: np.ndarray) -> np.ndarray:
    """Map log10 values at or below -99 (zero probability) to -inf."""
    x[x <= LOG_ZERO] = -np.inf
    return x


def write_arpa(model: NgramModel, path: str | os.PathLike, bar=None) -> None:
    """Atomically write ``model`` to ``path`` in ARPA format; ``bar`` (tqdm) counts n-grams."""
    V, N = model.V, model.order
    words = list(model.vocab)
    spaced = [" " + w for w in words]
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write("\\data\\\n")
        for k, n in enumerate(model.ngram_counts(), 1):
            f.write(f"ngram {k}={n}\n")
        texts: list[str] = []
        for k in range(1, N + 1):
            keys = model.keys[k - 1]
            if k == 1:
                texts = [words[i] for i in keys.tolist()]
            else:
                texts = [texts[c] + spaced[w] for c, w in zip((keys // V).tolist(), (keys % V).tolist())]
            probs = _fmt(model.logprob[k - 1])
            f.write(f"\n\\{k}-grams:\n")
            if k < N:
                bos = _fmt(model.backoff[k - 1])
                f.write("".join([f"{p}\t{t}\t{b}\n" for p, t, b in zip(probs, texts, bos)]))
            else:
                f.write("".join([f"{p}\t{t}\n" for p, t in zip(probs, texts)]))
            if bar is not None:
                bar.update(len(keys))
        f.write("\n\\end\\\n")


def read_arpa_counts(path: str | os.PathLike) -> list[int] | None:
    """The n-gram counts per order in the ``\\data\\`` header of an ARPA file (the rest is not
    read); None when the file is missing or its header is not one."""
    counts: list[int] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                s = line.strip()
                if s == "\\data\\" and not counts:
                    continue
                m = _COUNT.match(s)
                if m is None or int(m.group(1)) != len(counts) + 1:
                    break
                counts.append(int(m.group(2)))
    except (OSError, UnicodeDecodeError):
        return None
    return counts or None


class _Irregular(Exception):
    """The fast parser met something it does not handle; the line-by-line parser takes over."""


@dataclass
class _Section:
    """One \\k-grams: section: log10 probs, log10 backoffs, n-grams as 'w1 w2 ...', line numbers."""

    probs: np.ndarray
    backs: np.ndarray
    grams: list[str]
    line_nos: list[int] | None  # None when parsed by the fast path


def read_arpa(path: str | os.PathLike, bar=None) -> NgramModel:
    """Read an ARPA file into an NgramModel; raise LmlabError with the line number if malformed.

    ``bar`` (tqdm) counts n-grams read. Words are renumbered so that <unk>, <s>, </s> are
    ids 0, 1, 2; a model without <unk> gets one with log10 p = -100, as KenLM does.
    Regular files (tab-separated, as lmplz and lmlab write them) are parsed a section at a
    time; anything else goes through a line-by-line parser that names the bad line.
    """
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"model file {path} does not exist; train one with 'lmlab ngram train'")
    try:
        text = path.read_text(encoding="utf-8")
        return _build(_parse_fast(text), path, bar)
    except (_Irregular, UnicodeDecodeError):
        return _build(_parse_slow(path), path, bar)


def _floats(values: list[str]) -> np.ndarray:
    try:
        x = np.array(values, dtype=np.float64)
    except ValueError:
        raise _Irregular from None
    if np.isnan(x).any():
        raise _Irregular
    return x


def _parse_fast(text: str) -> list[_Section]:
    """Parse a regular ARPA text a section at a time; raise _Irregular on anything unusual."""
    start = text.find("\\data\\\n")
    if start < 0 or (start > 0 and text[start - 1] != "\n"):
        raise _Irregular
    cur = start + len("\\data\\\n")
    end = text.find("\n\n", cur)
    if end < 0:
        raise _Irregular
    sizes = []
    for i, line in enumerate(text[cur:end].split("\n"), 1):
        m = _COUNT.match(line.strip())
        if not m or int(m.group(1)) != i:
            raise _Irregular
        sizes.append(int(m.group(2)))
    N = len(sizes)
    sections = []
    cur = end + 1
    for k, n in enumerate(sizes, 1):
        head = f"\n\\{k}-grams:\n"
        if not text.startswith(head, cur) or n == 0:
            raise _Irregular
        body_start = cur + len(head)
        body_end = text.find("\n\n", body_start)
        if body_end < 0:
            raise _Irregular
        body = text[body_start:body_end]
        if "\r" in body:
            raise _Irregular
        fields = body.replace("\n", "\t").split("\t")
        stride = 3 if k < N else 2
        if len(fields) != stride * n:
            raise _Irregular
        probs = _floats(fields[0::stride])
        backs = _floats(fields[2::3]) if k < N else np.zeros(n)
        if (probs > 0).any():
            raise _Irregular
        sections.append(_Section(probs, backs, fields[1::stride], None))
        cur = body_end + 1
    if text[cur:].strip() != "\\end\\":
        raise _Irregular
    return sections


class _Lines:
    """A text file's lines with 1-based line numbers, for error messages."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, encoding="utf-8")
        self.no = 0
        self._back: str | None = None

    def push(self, line: str) -> None:
        """Give ``line`` back; the next call to next() returns it again."""
        self._back = line
        self.no -= 1

    def next(self) -> str | None:
        if self._back is not None:
            line, self._back = self._back, None
            self.no += 1
            return line
        try:
            line = self.f.readline()
        except UnicodeDecodeError:
            self.no += 1
            raise self.error("it is not UTF-8 text") from None
        if not line:
            return None
        self.no += 1
        return line.rstrip("\r\n")

    def error(self, what: str) -> LmlabError:
        return _error(self.path, self.no, what)


def _error(path: Path, line_no: int, what: str) -> LmlabError:
    return LmlabError(f"{path}:{line_no}: malformed ARPA file: {what}; "
                      "regenerate it with 'lmlab ngram train' (or lmplz)")


def _parse_float(text: str, lines: _Lines, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise lines.error(f"{what} {text!r} is not a number") from None
    if v != v:
        raise lines.error(f"{what} is NaN")
    return v


def _read_section(lines: _Lines, k: int, n: int, top: bool) -> _Section:
    """Read the ``n`` entries of the k-grams section line by line."""
    probs: list[float] = []
    grams: list[str] = []
    backs: list[float] = []
    line_nos: list[int] = []
    while True:
        line = lines.next()
        if line is None:
            raise lines.error(f"the file ends inside the {k}-grams section")
        if line.startswith("\\") or not line.strip():
            if len(probs) == n:
                lines.push(line)
                return _Section(np.array(probs), np.array(backs), grams, line_nos)
            if line.strip():
                raise lines.error(f"the header says {n} {k}-grams but the section has {len(probs)}")
            continue
        fields = [t for t in _SPLIT.split(line) if t]
        if len(fields) not in (k + 1, k + 2):
            raise lines.error(f"expected a log10 probability, {k} word(s) and an optional backoff")
        if len(probs) == n:
            raise lines.error(f"the header says {n} {k}-grams but the section has more")
        p = _parse_float(fields[0], lines, "probability")
        if p > 0:
            raise lines.error(f"log10 probability {p} is above 0")
        probs.append(p)
        grams.append(" ".join(fields[1:k + 1]))
        # A backoff on a top-order n-gram is never used; ignore it as SRILM does.
        has_bo = len(fields) == k + 2 and not top
        backs.append(_parse_float(fields[k + 1], lines, "backoff") if has_bo else 0.0)
        line_nos.append(lines.no)


def _parse_slow(path: Path) -> list[_Section]:
    """Parse an ARPA file line by line; raise LmlabError naming the first bad line."""
    lines = _Lines(path)
    try:
        return _parse_lines(lines)
    finally:
        lines.f.close()


def _parse_lines(lines: _Lines) -> list[_Section]:
    while True:
        line = lines.next()
        if line is None:
            raise lines.error("there is no \\data\\ line")
        if line.strip() == "\\data\\":
            break
    sizes: list[int] = []
    while True:
        line = lines.next()
        if line is None:
            raise lines.error("the file ends in the \\data\\ header")
        s = line.strip()
        if not s:
            if sizes:
                break
            continue
        m = _COUNT.match(s)
        if not m:
            raise lines.error(f"expected 'ngram K=COUNT' in the header, got {s[:40]!r}")
        if int(m.group(1)) != len(sizes) + 1:
            raise lines.error(f"expected the count of {len(sizes) + 1}-grams, got {m.group(1)}-grams")
        sizes.append(int(m.group(2)))
    N = len(sizes)
    if sizes[0] == 0:
        raise lines.error("the header says the model has no 1-grams")
    sections = []
    for k in range(1, N + 1):
        while True:
            line = lines.next()
            if line is None:
                raise lines.error(f"the file ends before the \\{k}-grams: section")
            if line.strip():
                break
        m = _HEADER.match(line.strip())
        if not m or int(m.group(1)) != k:
            raise lines.error(f"expected '\\{k}-grams:', got {line.strip()[:40]!r}")
        sections.append(_read_section(lines, k, sizes[k - 1], k == N))
    while True:
        line = lines.next()
        if line is None:
            raise lines.error("\\end\\ is missing")
        if line.strip() == "\\end\\":
            break
        if line.strip():
            raise lines.error(f"expected \\end\\, got {line.strip()[:40]!r}")
    return sections


def _fail(path: Path, sec: _Section, i: int, what: str) -> Exception:
    """The error for entry ``i`` of ``sec``: _Irregular from the fast path (which has no
    line numbers, so the slow path reparses), LmlabError with the line number otherwise."""
    if sec.line_nos is None:
        return _Irregular()
    return _error(path, sec.line_nos[i], what)


def _build(sections: list[_Section], path: Path, bar=None) -> NgramModel:
    """Turn parsed sections into an NgramModel (vocabulary, sorted keys, log10 values)."""
    N = len(sections)
    uni = sections[0]
    file_words = uni.grams
    if any(" " in w or not w for w in file_words):
        bad = next(i for i, w in enumerate(file_words) if " " in w or not w)
        raise _fail(path, uni, bad, "a 1-gram entry has more than one word")
    if len(set(file_words)) != len(file_words):
        seen: set[str] = set()
        bad = next(i for i, w in enumerate(file_words) if w in seen or seen.add(w))
        raise _fail(path, uni, bad, f"1-gram {file_words[bad]!r} appears twice")
    for special in (BOS, EOS):
        if special not in file_words:
            raise LmlabError(f"{path}: the ARPA model has no {special} 1-gram, so it cannot score "
                             "sentences; use a model trained on sentences (lmlab ngram train, lmplz)")
    vocab = [UNK, BOS, EOS] + [w for w in file_words if w not in (UNK, BOS, EOS)]
    index = {w: i for i, w in enumerate(vocab)}
    V = len(vocab)
    ids = np.array([index[w] for w in file_words], dtype=np.int64)
    lp1 = np.full(V, UNK_MISSING_LOGPROB)
    bo1 = np.zeros(V)
    lp1[ids] = _zero_to_inf(uni.probs.astype(np.float64))
    bo1[ids] = _zero_to_inf(uni.backs.astype(np.float64))
    keys = [np.arange(V, dtype=np.int64)]
    logprob, backoff = [lp1], [bo1]
    if bar is not None:
        bar.reset(total=sum(len(sec.grams) for sec in sections))
        bar.update(len(file_words))
    prev: dict[str, int] = index
    for k in range(2, N + 1):
        sec = sections[k - 1]
        parts = [g.rpartition(" ") for g in sec.grams]
        try:
            rows = np.fromiter((prev[p[0]] for p in parts), dtype=np.int64, count=len(parts))
        except KeyError:
            bad = next(i for i, p in enumerate(parts) if p[0] not in prev)
            raise _fail(path, sec, bad, f"the context {parts[bad][0]!r} of this {k}-gram is missing "
                                        f"from the {k - 1}-grams") from None
        try:
            wids = np.fromiter((index[p[2]] for p in parts), dtype=np.int64, count=len(parts))
        except KeyError:
            bad = next(i for i, p in enumerate(parts) if p[2] not in index)
            raise _fail(path, sec, bad, f"the word {parts[bad][2]!r} of this {k}-gram is not among the "
                                        "1-grams") from None
        key = rows * V + wids
        order = np.argsort(key, kind="stable")
        key = key[order]
        dup = np.flatnonzero(key[1:] == key[:-1])
        if len(dup):
            bad = int(order[dup[0] + 1])
            raise _fail(path, sec, bad, f"{k}-gram {sec.grams[bad]!r} appears twice")
        keys.append(key)
        logprob.append(_zero_to_inf(sec.probs.astype(np.float64)[order]))
        backoff.append(_zero_to_inf(sec.backs.astype(np.float64)[order]))
        if bar is not None:
            bar.update(len(order))
        if k < N:
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(len(order))
            prev = dict(zip(sec.grams, rank.tolist()))
    return NgramModel(vocab, keys, logprob, backoff[:N - 1], smoothing="arpa")
