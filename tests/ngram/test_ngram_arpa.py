"""ARPA files: round trip, KenLM scores our files as we do, malformed files name their line."""

from __future__ import annotations

import math
from pathlib import Path

import kenlm
import numpy as np
import pytest

from lmlab.errors import LmlabError
from lmlab.ngram.arpa import read_arpa, write_arpa
from lmlab.ngram.model import SMOOTHINGS, corpus_from_lines, train_ngram


def zipf_text(n_lines: int, seed: int, vocab: int = 2000) -> list[str]:
    """Sentences of Zipf-distributed words w0..w{vocab-1}."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocab + 1)
    weights /= weights.sum()
    lines = []
    for _ in range(n_lines):
        n = int(rng.integers(0, 14))
        lines.append(" ".join(f"w{i}" for i in rng.choice(vocab, n, p=weights)))
    return lines


@pytest.fixture(scope="module")
def texts() -> tuple[list[str], list[str]]:
    train = zipf_text(1500, seed=1)
    test = zipf_text(200, seed=2, vocab=3000)  # words beyond training's w0..w1999 are OOVs
    return train, test


def kenlm_log10(path: Path, lines: list[str]) -> float:
    model = kenlm.Model(str(path))
    return sum(model.score(line, bos=True, eos=True) for line in lines)


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
def test_kenlm_scores_our_arpa_like_we_do(smoothing, texts, tmp_path):
    train, test = texts
    model = train_ngram(corpus_from_lines(train), 3, smoothing, k=0.1)
    path = tmp_path / f"{smoothing}.arpa"
    write_arpa(model, path)
    # mle gives unseen events probability 0 (written -99, which KenLM reads as 1e-99): compare it
    # on its training text, where every n-gram was seen.
    lines = train[:300] if smoothing == "mle" else test
    ours = model.score_lines(lines)
    assert ours.oov.sum() > 0 or smoothing == "mle"
    summary = ours.summary()
    assert math.isfinite(summary["perplexity"])
    theirs = kenlm_log10(path, lines)
    kenlm_ppl = 10 ** (-theirs / ours.tokens)
    assert kenlm_ppl == pytest.approx(summary["perplexity"], rel=1e-4)
    # the same from the ARPA file read back
    assert read_arpa(path).score_lines(lines).summary()["perplexity"] == pytest.approx(summary["perplexity"],
                                                                                        rel=1e-5)


def test_kenlm_oov_count_matches(texts, tmp_path):
    train, test = texts
    model = train_ngram(corpus_from_lines(train), 4, "mkn")
    write_arpa(model, tmp_path / "m.arpa")
    km = kenlm.Model(str(tmp_path / "m.arpa"))
    kenlm_oovs = sum(oov for line in test for _, _, oov in km.full_scores(line))
    assert model.score_lines(test).oov.sum() == kenlm_oovs


def test_round_trip(texts, tmp_path):
    train, _ = texts
    model = train_ngram(corpus_from_lines(train), 3, "katz")
    write_arpa(model, tmp_path / "a.arpa")
    back = read_arpa(tmp_path / "a.arpa")
    assert back.vocab == model.vocab and back.ngram_counts() == model.ngram_counts()
    for k in range(3):
        np.testing.assert_array_equal(back.keys[k], model.keys[k])
        np.testing.assert_allclose(back.logprob[k], model.logprob[k], rtol=1e-6, atol=1e-7)
    for k in range(2):
        np.testing.assert_allclose(back.backoff[k], model.backoff[k], rtol=1e-6, atol=1e-7)


def test_zero_probabilities_round_trip_as_minus_99(tmp_path):
    model = train_ngram(corpus_from_lines(["a b", "b a"]), 2, "mle")
    write_arpa(model, tmp_path / "mle.arpa")
    text = (tmp_path / "mle.arpa").read_text()
    assert "-99\t<unk>" in text
    back = read_arpa(tmp_path / "mle.arpa")
    assert np.isneginf(back.score_lines(["a a"]).logprob[1])


SRILM_STYLE = """This text before the header is ignored.

\\data\\
ngram 1=4
ngram 2=3

\\1-grams:
-0.5 </s>
-99 <s> -0.3
-0.6 a -0.2
-0.9 b

\\2-grams:
-0.2 <s> a
-0.3 a b 0
-0.1 a </s>

\\end\\
"""


def test_reads_space_separated_arpa_without_unk(tmp_path):
    path = tmp_path / "srilm.arpa"
    path.write_text(SRILM_STYLE)
    model = read_arpa(path)
    assert model.ngram_counts() == [5, 3]  # <unk> added, as KenLM does
    lp = model.score_lines(["a b", "c"]).logprob
    # a|<s> = -0.2; b|a = -0.3; </s>|b = bo(b) 0 + -0.5; c is <unk> (-100) after bo(<s>) -0.3; </s>|<unk>
    np.testing.assert_allclose(lp, [-0.2, -0.3, -0.5, -0.3 - 100, -0.5])


GOOD = ["\\data\\", "ngram 1=3", "ngram 2=1", "", "\\1-grams:", "-0.5\t</s>\t0", "0\t<s>\t-0.3",
        "-0.6\ta\t-0.2", "", "\\2-grams:", "-0.2\t<s> a", "", "\\end\\"]


def _with(lines: list[str], at: int, new: str | None) -> str:
    out = list(lines)
    if new is None:
        del out[at]
    else:
        out[at] = new
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("text, line, what", [
    ("ngram 1=3\n", 1, "no \\\\data\\\\"),
    (_with(GOOD, 1, "ngram one=3"), 2, "ngram K=COUNT"),
    (_with(GOOD, 6, "zero\t<s>\t-0.3"), 7, "not a number"),
    (_with(GOOD, 7, "-0.6\ta\tb\tc"), 8, "log10 probability"),
    (_with(GOOD, 10, "-0.2\t<s> b"), 11, "word 'b' of this 2-gram is not among the 1-grams"),
    (_with(GOOD, 10, "-0.2\tb a"), 11, "context 'b' of this 2-gram is missing"),
    (_with(GOOD, 7, "-0.6\t</s>\t-0.2"), 8, "appears twice"),
    (_with(GOOD, 9, "\\3-grams:"), 10, "expected '\\\\2-grams:'"),
    (_with(GOOD, 2, "ngram 2=2"), 13, "header says 2 2-grams but the section has 1"),
    (_with(GOOD, 12, None), 12, "end"),
    (_with(GOOD, 5, "0.5\t</s>\t0"), 6, "above 0"),
])
def test_malformed_arpa_names_the_line(tmp_path, text, line, what):
    path = tmp_path / "bad.arpa"
    path.write_text(text)
    with pytest.raises(LmlabError, match=f"bad.arpa:{line}: malformed ARPA file: .*{what}"):
        read_arpa(path)


def test_good_fixture_reads(tmp_path):
    path = tmp_path / "good.arpa"
    path.write_text("\n".join(GOOD) + "\n")
    assert read_arpa(path).ngram_counts() == [4, 1]


def test_missing_model_and_missing_sentence_markers(tmp_path):
    with pytest.raises(LmlabError, match="does not exist"):
        read_arpa(tmp_path / "nope.arpa")
    path = tmp_path / "nos.arpa"
    path.write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-0.1\ta\n\n\\end\\\n")
    with pytest.raises(LmlabError, match="no <s> 1-gram"):
        read_arpa(path)


def test_orders_with_no_ngrams(tmp_path):
    # One-word sentences have no 4-grams: the 4-gram section is empty, and everything still scores.
    model = train_ngram(corpus_from_lines(["a", "b", "a"]), 4, "witten-bell")
    assert model.ngram_counts() == [5, 4, 2, 0]
    write_arpa(model, tmp_path / "e.arpa")
    ours = model.score_lines(["a b"]).logprob
    np.testing.assert_allclose(read_arpa(tmp_path / "e.arpa").score_lines(["a b"]).logprob, ours, rtol=1e-6)
    assert kenlm_log10(tmp_path / "e.arpa", ["a b"]) == pytest.approx(ours.sum(), rel=1e-6)
