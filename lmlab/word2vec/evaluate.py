"""Intrinsic evaluations of word vectors: word analogies (3CosAdd) and word similarity.

Both follow gensim's ``KeyedVectors.evaluate_word_analogies`` and
``evaluate_word_pairs`` rule for rule (restriction to the ``restrict_vocab`` most
frequent words, case-insensitive matching where the most frequent case variant wins,
questions or pairs with out-of-vocabulary words skipped and counted), so the numbers
are the same as gensim's on the same vectors. The analogy search is batched: one
matrix product per block of questions instead of one per question.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmlab.errors import LmlabError
from lmlab.word2vec.vectors import WordVectors

ANALOGIES_FILE = "questions-words.txt"
SIMILARITY_FILE = "wordsim353.tsv"


def gensim_test_file(name: str) -> Path:
    """Return the path of ``name`` in gensim's shipped ``gensim/test/test_data`` (without importing gensim).

    Raises LmlabError when gensim is not installed or does not ship the file.
    """
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise LmlabError(f"{name} ships with gensim, which is not installed: pip install gensim, "
                         "or pass the file with --analogies/--similarity")
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data" / name
    if not path.is_file():
        raise LmlabError(f"this gensim install has no {path}; pass the file with --analogies/--similarity")
    return path


@dataclass
class SectionScore:
    """Correct and evaluated (in-vocabulary) questions of one analogy section."""

    section: str
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass
class AnalogyResult:
    """Accuracy per section and in total; ``oov`` questions had a word outside the vocabulary."""

    sections: list[SectionScore] = field(default_factory=list)
    questions: int = 0
    oov: int = 0

    @property
    def correct(self) -> int:
        return sum(s.correct for s in self.sections)

    @property
    def total(self) -> int:
        return sum(s.total for s in self.sections)

    @property
    def accuracy(self) -> float:
        """Accuracy over the evaluated questions (gensim's score); 0 when none could be evaluated."""
        return self.correct / self.total if self.total else 0.0

    @property
    def oov_ratio(self) -> float:
        """Percentage of questions skipped for out-of-vocabulary words."""
        return 100.0 * self.oov / self.questions if self.questions else 0.0

    def to_dict(self) -> dict:
        """Return the figures as a JSON-friendly dict."""
        return {"accuracy": self.accuracy, "correct": self.correct, "evaluated": self.total,
                "questions": self.questions, "oov": self.oov, "oov_ratio": self.oov_ratio,
                "sections": {s.section: {"accuracy": s.accuracy, "correct": s.correct, "evaluated": s.total}
                             for s in self.sections}}


@dataclass
class SimilarityResult:
    """Pearson and Spearman correlation of cosine similarity with human judgements."""

    pearson: float
    spearman: float
    pairs: int
    oov: int

    @property
    def oov_ratio(self) -> float:
        """Percentage of pairs skipped for out-of-vocabulary words."""
        return 100.0 * self.oov / (self.pairs + self.oov) if self.pairs + self.oov else 0.0

    def to_dict(self) -> dict:
        """Return the figures as a JSON-friendly dict."""
        return {"spearman": self.spearman, "pearson": self.pearson, "pairs": self.pairs, "oov": self.oov,
                "oov_ratio": self.oov_ratio}


def _ok_vocab(wv: WordVectors, restrict_vocab: int, case_insensitive: bool) -> dict[str, int]:
    """Map (upper-cased) words among the first ``restrict_vocab`` to their index; earliest wins."""
    ok: dict[str, int] = {}
    for i, w in enumerate(wv.words[:restrict_vocab]):
        ok.setdefault(w.upper() if case_insensitive else w, i)
    return ok


def _read_lines(path: str | os.PathLike, what: str, flag: str) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"{what} file {path} does not exist; check the path given to {flag}")
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def evaluate_analogies(wv: WordVectors, path: str | os.PathLike, restrict_vocab: int = 300000,
                       case_insensitive: bool = True, block: int = 512) -> AnalogyResult:
    """Answer the analogies ``a : b :: c : ?`` in ``path`` by 3CosAdd; return accuracies.

    The file has ``: section`` header lines and ``a b c d`` questions. The answer is the
    word among the first ``restrict_vocab`` maximising cos(x, b - a + c) on unit vectors,
    excluding a, b and c; questions with a word outside that vocabulary are skipped and
    counted in ``oov``.
    """
    lines = _read_lines(path, "analogies", "--analogies")
    ok = _ok_vocab(wv, restrict_vocab, case_insensitive)
    result = AnalogyResult()
    questions: list[tuple[int, int, int, int, int]] = []  # section, a, b, c, expected (indices)
    for lineno, line in enumerate(lines, start=1):
        if line.startswith(": "):
            result.sections.append(SectionScore(line.lstrip(": ").strip(), 0, 0))
            continue
        if not result.sections:
            raise LmlabError(f"{path}:{lineno}: a question before any ': section' line; "
                             "is this an analogies file like questions-words.txt?")
        words = [w.upper() if case_insensitive else w for w in line.split()]
        if len(words) != 4:
            continue  # gensim skips malformed lines too
        result.questions += 1
        if any(w not in ok for w in words):
            result.oov += 1
            continue
        questions.append((len(result.sections) - 1, *(ok[w] for w in words)))
    if not questions:
        return result
    q = np.array(questions, dtype=np.int64)
    predicted = _answer(wv, q[:, 1], q[:, 2], q[:, 3], min(restrict_vocab, len(wv)), case_insensitive, block)
    keys = np.array([w.upper() if case_insensitive else w for w in wv.words] + [""], dtype=object)
    correct = keys[predicted] == keys[q[:, 4]]  # gensim compares the (upper-cased) words
    counts = np.bincount(q[:, 0], minlength=len(result.sections))
    hits = np.bincount(q[:, 0], weights=correct, minlength=len(result.sections))
    for s, n, h in zip(result.sections, counts, hits):
        s.total, s.correct = int(n), int(h)
    return result


def _answer(wv: WordVectors, a: np.ndarray, b: np.ndarray, c: np.ndarray, restrict: int,
            case_insensitive: bool, block: int) -> np.ndarray:
    """Return the predicted word index for each question, -1 for none (gensim's most_similar(topn=5) loop)."""
    vecs = wv.vectors[:restrict]
    norms = np.linalg.norm(wv.vectors, axis=1)
    unit = wv.vectors / norms[:, None]
    keys = [w.upper() if case_insensitive else w for w in wv.words[:restrict]]
    # gensim: mean of (b, c, -a) unit vectors accumulated in float32, divided by 3 in float64, unit length
    mean = (unit[b] + unit[c]) - unit[a]
    mean = mean.astype(np.float64) / 3.0
    mean = (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)
    out = np.empty(len(a), dtype=np.int64)
    topn, n_inputs = 5, 3
    cand = min(topn + n_inputs, restrict)
    for start in range(0, len(a), block):
        sl = slice(start, start + block)
        dists = (mean[sl] @ vecs.T) / norms[:restrict]
        best = np.argpartition(-dists, cand - 1, axis=1)[:, :cand] if cand < restrict else \
            np.broadcast_to(np.arange(restrict), (dists.shape[0], restrict))
        order = np.argsort(-np.take_along_axis(dists, best, axis=1), axis=1, kind="stable")
        best = np.take_along_axis(best, order, axis=1)
        for r, row in enumerate(best):
            i = start + r
            inputs = {a[i], b[i], c[i]}
            ignore = {keys[a[i]], keys[b[i]], keys[c[i]]}
            sims = [j for j in row if j not in inputs][:topn]
            pred = -1
            for j in sims:
                pred = j
                if keys[j] not in ignore:
                    break
            out[i] = pred
    return out


def evaluate_similarity(wv: WordVectors, path: str | os.PathLike, restrict_vocab: int = 300000,
                        case_insensitive: bool = True, delimiter: str = "\t") -> SimilarityResult:
    """Correlate cosine similarity with the human scores in ``path`` (``word1<TAB>word2<TAB>score``).

    Returns Pearson and Spearman correlations over the in-vocabulary pairs and the count
    of skipped out-of-vocabulary pairs; lines starting with ``#`` are comments.
    """
    from scipy import stats

    lines = _read_lines(path, "similarity", "--similarity")
    ok = _ok_vocab(wv, restrict_vocab, case_insensitive)
    gold, model, oov = [], [], 0
    for line in lines:
        if not line or line.startswith("#"):
            continue
        parts = line.split(delimiter)
        if len(parts) != 3:
            continue
        a, b = (p.upper() if case_insensitive else p for p in parts[:2])
        try:
            score = float(parts[2])
        except ValueError:
            continue
        if a not in ok or b not in ok:
            oov += 1
            continue
        gold.append(score)
        model.append(_cosine(wv.vectors[ok[a]], wv.vectors[ok[b]]))
    if len(gold) < 2:
        raise LmlabError(f"only {len(gold)} word pair(s) of {path} are in the vocabulary; "
                         "train on a larger corpus or with a lower --min-count")
    return SimilarityResult(pearson=float(stats.pearsonr(gold, model)[0]),
                            spearman=float(stats.spearmanr(gold, model)[0]), pairs=len(gold), oov=oov)


def _cosine(u: np.ndarray, v: np.ndarray) -> np.float32:
    """Cosine of two float32 vectors, normalised in float32 like gensim's similarity()."""
    return np.float32(np.dot(u / np.float32(np.linalg.norm(u)), v / np.float32(np.linalg.norm(v))))
