"""Word vectors: the word2vec text format against gensim, and our evaluations equal gensim's numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lmlab.errors import LmlabError
from lmlab.word2vec.evaluate import (
    ANALOGIES_FILE,
    SIMILARITY_FILE,
    evaluate_analogies,
    evaluate_similarity,
    gensim_test_file,
)
from lmlab.word2vec.vectors import WordVectors, load_word2vec_text, save_word2vec_text

gensim = pytest.importorskip("gensim")
from gensim.models import KeyedVectors  # noqa: E402


def _planted_vectors(seed: int = 0, dim: int = 24) -> WordVectors:
    """Vectors for the analogy and wordsim words with a per-section offset, so some answers are right.

    Some words are left out (out-of-vocabulary questions), some appear in two case variants
    (the first one must win), and filler words are mixed in.
    """
    rng = np.random.default_rng(seed)
    sections: dict[str, list[tuple[str, str]]] = {}
    name = ""
    for line in gensim_test_file(ANALOGIES_FILE).read_text().splitlines():
        if line.startswith(": "):
            name = line[2:]
            continue
        a, b, c, d = line.split()
        sections.setdefault(name, []).extend([(a, b), (c, d)])
    words = sorted({w for pairs in sections.values() for pair in pairs for w in pair})
    for line in gensim_test_file(SIMILARITY_FILE).read_text().splitlines():
        if not line.startswith("#"):
            words.extend(line.split("\t")[:2])
    words = list(dict.fromkeys(words))
    vec = {w: rng.normal(size=dim) for w in words}
    for pairs in sections.values():
        offset = rng.normal(size=dim) * 1.5
        for x, y in pairs:
            vec[y] = vec[x] + offset + rng.normal(size=dim) * 0.6
    vocab = [w for w in words if rng.random() > 0.05]  # about 5% of the words out of vocabulary
    rng.shuffle(vocab)
    variants = [w.lower() if w[0].isupper() else w.upper() for w in vocab[:60]]
    for i, v in enumerate(variants):  # case variants before and after the original
        vocab.insert(rng.integers(0, len(vocab)), v)
        vec[v] = rng.normal(size=dim) if i % 2 else vec[vocab[i]] + rng.normal(size=dim) * 0.1
    vocab += [f"filler{i}" for i in range(200)]
    for w in vocab:
        vec.setdefault(w, rng.normal(size=dim))
    return WordVectors(vocab, np.stack([vec[w] for w in vocab]).astype(np.float32))


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, WordVectors]:
    path = tmp_path_factory.mktemp("vectors") / "planted.txt"
    wv = _planted_vectors()
    save_word2vec_text(path, wv)
    return path, wv


def test_text_format_roundtrip_and_gensim_loads_it(planted):
    path, wv = planted
    ours = load_word2vec_text(path)
    assert ours.words == wv.words
    np.testing.assert_array_equal(ours.vectors, wv.vectors)  # 9 significant digits: exact float32
    kv = KeyedVectors.load_word2vec_format(str(path), binary=False)
    assert list(kv.index_to_key) == [w for i, w in enumerate(wv.words) if wv.index[w] == i]
    np.testing.assert_array_equal(kv["filler3"], wv.vector("filler3"))
    header = path.read_text().splitlines()[0]
    assert header == f"{len(wv)} {wv.dim}"


def test_reads_gensim_written_vectors(tmp_path):
    kv = KeyedVectors(vector_size=3)
    kv.add_vectors(["alpha", "beta", "gamma"], np.arange(9, dtype=np.float32).reshape(3, 3) / 7)
    kv.save_word2vec_format(str(tmp_path / "g.txt"), binary=False)
    wv = load_word2vec_text(tmp_path / "g.txt")
    assert wv.words == ["alpha", "beta", "gamma"]
    np.testing.assert_allclose(wv.vectors, kv.vectors, rtol=1e-6)


@pytest.mark.parametrize("body, message", [
    ("2 3\na 1 2 3\nb 1 2\n", r":3: expected a word and 3 numbers, found 2"),
    ("2 3\na 1 2 3\nb 1 2 3 4\n", r":3: expected a word and 3 numbers, found 4"),
    ("3 3\na 1 2 3\nb 1 2 3\n", r"announces 3 vectors but the file has 2"),
    ("a 1 2 3\n", r":1: expected the header 'count dim'"),
    ("1 2\na 1 x\n", r":2: a value for 'a' is not a number"),
    ("1 2\na 1 nan\n", r":2: the vector of 'a' holds NaN"),
    ("", r"is empty"),
])
def test_reader_errors_name_the_line(tmp_path, body, message):
    path = tmp_path / "bad.txt"
    path.write_text(body)
    with pytest.raises(LmlabError, match=message):
        load_word2vec_text(path)


def test_missing_file_and_unknown_word(tmp_path):
    with pytest.raises(LmlabError, match="does not exist"):
        load_word2vec_text(tmp_path / "nope.txt")
    wv = WordVectors(["king", "queen"], np.eye(2))
    with pytest.raises(LmlabError, match="'King' is not in the vocabulary.*did you mean 'king'"):
        wv.most_similar("King")


def test_writer_is_atomic_and_rejects_spaces(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("old")
    with pytest.raises(LmlabError, match="whitespace"):
        save_word2vec_text(path, WordVectors(["a b"], np.ones((1, 2))))
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["v.txt"]


def test_most_similar_matches_gensim(planted):
    path, wv = planted
    kv = KeyedVectors.load_word2vec_format(str(path), binary=False)
    ours = wv.most_similar("Athens", 7)
    theirs = kv.most_similar("Athens", topn=7)
    assert [w for w, _ in ours] == [w for w, _ in theirs]
    np.testing.assert_allclose([c for _, c in ours], [c for _, c in theirs], atol=1e-6)


@pytest.mark.parametrize("restrict", [300000, 1200])
def test_analogies_equal_gensim(planted, restrict):
    path, wv = planted
    kv = KeyedVectors.load_word2vec_format(str(path), binary=False)
    analogies = gensim_test_file(ANALOGIES_FILE)
    ours = evaluate_analogies(load_word2vec_text(path), analogies, restrict_vocab=restrict)
    score, sections = kv.evaluate_word_analogies(str(analogies), restrict_vocab=restrict)
    total = sections[-1]
    assert ours.accuracy == pytest.approx(score, abs=1e-12)
    assert 0.05 < ours.accuracy < 0.95  # the planted structure makes the test able to fail both ways
    assert ours.correct == len(total["correct"])
    assert ours.total == len(total["correct"]) + len(total["incorrect"])
    assert ours.questions == 19544
    assert ours.oov == ours.questions - ours.total
    assert ours.oov > 0
    theirs = {s["section"]: (len(s["correct"]), len(s["correct"]) + len(s["incorrect"]))
              for s in sections[:-1]}
    assert {s.section: (s.correct, s.total) for s in ours.sections} == theirs


@pytest.mark.parametrize("restrict", [300000, 1200])
def test_similarity_equals_gensim(planted, restrict):
    path, _ = planted
    kv = KeyedVectors.load_word2vec_format(str(path), binary=False)
    pairs = gensim_test_file(SIMILARITY_FILE)
    ours = evaluate_similarity(load_word2vec_text(path), pairs, restrict_vocab=restrict)
    pearson, spearman, oov_ratio = kv.evaluate_word_pairs(str(pairs), restrict_vocab=restrict)
    assert ours.pearson == pytest.approx(pearson[0], abs=1e-6)
    assert ours.spearman == pytest.approx(spearman.statistic, abs=1e-6)
    assert ours.oov_ratio == pytest.approx(oov_ratio, abs=1e-9)
    assert ours.oov > 0 and ours.pairs > 100


def test_evaluation_errors(tmp_path):
    wv = WordVectors(["a", "b"], np.eye(2))
    bad = tmp_path / "q.txt"
    bad.write_text("a b a b\n")
    with pytest.raises(LmlabError, match="before any ': section' line"):
        evaluate_analogies(wv, bad)
    with pytest.raises(LmlabError, match="does not exist"):
        evaluate_analogies(wv, tmp_path / "missing.txt")
    pairs = tmp_path / "p.tsv"
    pairs.write_text("x\ty\t1.0\n")
    with pytest.raises(LmlabError, match="only 0 word pair"):
        evaluate_similarity(wv, pairs)
