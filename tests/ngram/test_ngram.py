"""N-gram estimation: counting, discounts by hand, KenLM lmplz parity, distributions summing to 1."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lmlab.errors import LmlabError
from lmlab.ngram.model import (
    BOS_ID,
    SMOOTHINGS,
    UNK_ID,
    corpus_from_ids,
    corpus_from_lines,
    count_ngrams,
    sentence_positions,
    train_ngram,
)
from lmlab.ngram.smoothing import good_turing_discounts, katz_discounts, simple_good_turing

# Hand-checked corpus (order 2). Bigram counts: <s> a 3, a a 3, a </s> 2, a b 2, b </s> 2, and seven
# bigrams seen once, so n1=7 n2=3 n3=2 n4=0. Unigram continuation counts (distinct left neighbours):
# a 3 (<s>, a, c), b 2, c 2, d 1, </s> 4, so n1=1 n2=2 n3=1 n4=1.
HAND = ["a a a a", "a b", "a b", "b c a", "c", "d"]

# 70 Zipf-distributed sentences; KenLM lmplz -o 3 on this text (no --discount_fallback) printed
# the discounts below, and the kenlm module scored lmplz's ARPA as recorded in LMPLZ_SCORES.
LMPLZ_CORPUS = """is this the
a to
be the the or to they the
of this it the of the was the
for will as in they your is
of the to of the or
the out
the and as are your
in when the of each a your
it the of this to the is
the was the the or and
a
on how it and the
about they in one
and and by and
was that as and one
in is to
a
is the a a and and
to the of the it one
the which the had to
of the that and the
of their was
to of a the and
this of of as each do to
of
the are the are for is the
of was and it of he the of
not of one of
with to of the but
it
if is the had
and
the is all it a your
of a of not were the the
from is the to of the
an and but on a how of
the
the in of
it or and and of had
the is the the the had be have
the it can the is is
and of in the all
be have
that
the
i be
of up to the
for the by
when and will when of of a
the of
the
as of and and the
will will the the that about
was of in of of the of how
the it and of do the the be
of the that from the
the of the is
as the
of
a had the a be the
the the the
of are have that the the
at
the to the are
of the do from
in by to and and
a be an each the
it it the how of is
that of the
"""
LMPLZ_STATS = [(48, (0.37931, 0.735632, 2.24138)), (209, (0.740385, 1.01282, 1.76603)),
                (281, (0.883562, 1.22039, 2.29315))]
LMPLZ_ENTRIES = {  # ARPA lines from lmplz: n-gram -> (log10 p, log10 backoff)
    "<unk>": (-2.1529613, 0.0), "<s>": (0.0, -0.4206981), "</s>": (-0.95413125, 0.0),
    "the": (-0.9013783, -0.39267358), "<s> the": (-0.57632345, -0.11574441),
    "of the": (-0.77747715, -0.10103427), "the of": (-1.0097041, -0.11321171),
    "is is </s>": (-0.49849677, None), "the is </s>": (-0.47893074, None),
}
HELD_OUT = ["the cat sat on the mat", "of the people by the people", "he said that it was not", ""]
KENLM_ON_LMPLZ = {"corpus": -333.85368633270264, "held_out": -36.92751216888428}


def _entry(model, gram: str) -> tuple[float, float | None]:
    """(log10 p, log10 backoff) of an n-gram given as text."""
    words = gram.split(" ")
    ids = [model.index[w] for w in words]
    row = model._row(ids)
    assert row >= 0, gram
    k = len(ids)
    return float(model.logprob[k - 1][row]), (float(model.backoff[k - 1][row]) if k < model.order else None)


def test_count_ngrams_matches_brute_force():
    lines = ["a b a b c", "", "b c", "a b a b c d e"]
    corpus = corpus_from_lines(lines)
    counts = count_ngrams(corpus, 4)
    V = counts.V
    for k in range(1, 5):
        want: Counter = Counter()
        for line in lines:
            sent = ["<s>", *line.split(), "</s>"]
            want.update(tuple(sent[i:i + k]) for i in range(len(sent) - k + 1))
        got = {}
        texts = [(w,) for w in counts.vocab]
        for j in range(2, k + 1):
            keys = counts.keys[j - 1]
            texts = [texts[c] + (counts.vocab[w],) for c, w in zip(keys // V, keys % V)]
        got = {t: int(c) for t, c in zip(texts, counts.counts[k - 1]) if c > 0}
        assert got == dict(want), k


def test_corpus_from_ids_uses_eot_as_sentence_end():
    corpus = corpus_from_ids(np.array([5, 6, 9, 9, 7, 5], dtype=np.uint16), eot_id=9)
    words = [corpus.vocab[i] for i in corpus.stream]
    assert words == ["<s>", "5", "6", "</s>", "<s>", "</s>", "<s>", "7", "5", "</s>"]
    assert corpus.sentences == 3 and corpus.words == 4


def test_mkn_discounts_and_probabilities_by_hand():
    model = train_ngram(corpus_from_lines(HAND), 2, "mkn")
    uni, bi = model.info["orders"]
    # Y = n1/(n1+2n2); D1 = 1-2Y n2/n1, D2 = 2-3Y n3/n2, D3+ = 3-4Y n4/n3
    assert [uni["D1"], uni["D2"], uni["D3+"]] == pytest.approx([0.2, 1.7, 2.2])
    assert [bi["D1"], bi["D2"], bi["D3+"]] == pytest.approx([7 / 13, 12 / 13, 3])
    # p(a) = (3 - D3+)/12 + gamma/6 with gamma = (0.2*1 + 1.7*2 + 2.2*2)/12 = 2/3, over 6 words incl. <unk>
    assert 10 ** _entry(model, "a")[0] == pytest.approx(8 / 45)
    assert 10 ** _entry(model, "<unk>")[0] == pytest.approx(1 / 9)
    # p(a|<s>) = (3 - 3)/6 + gamma(<s>) p(a), gamma(<s>) = (3*1 + 7/13*3)/6 = 10/13
    assert 10 ** _entry(model, "<s> a")[0] == pytest.approx(16 / 117)
    assert 10 ** _entry(model, "<s>")[1] == pytest.approx(10 / 13)


def test_kn_uses_one_discount_per_order():
    model = train_ngram(corpus_from_lines(HAND), 2, "kn")
    assert model.info["orders"][0]["D"] == pytest.approx(1 / 5)  # n1/(n1 + 2 n2) = 1/(1+4)
    assert model.info["orders"][1]["D"] == pytest.approx(7 / 13)


def test_mkn_matches_kenlm_lmplz():
    model = train_ngram(corpus_from_lines(LMPLZ_CORPUS.splitlines()), 3, "mkn")
    assert model.ngram_counts() == [n for n, _ in LMPLZ_STATS]
    for facts, (_, ds) in zip(model.info["orders"], LMPLZ_STATS):
        assert [facts["D1"], facts["D2"], facts["D3+"]] == pytest.approx(list(ds), rel=2e-5)
    for gram, (lp, bo) in LMPLZ_ENTRIES.items():
        got_lp, got_bo = _entry(model, gram)
        assert got_lp == pytest.approx(lp, abs=2e-6), gram
        if bo is not None:
            assert got_bo == pytest.approx(bo, abs=2e-6), gram
    corpus_total = model.score_lines(LMPLZ_CORPUS.splitlines()).logprob.sum()
    held_out = model.score_lines(HELD_OUT)
    assert corpus_total == pytest.approx(KENLM_ON_LMPLZ["corpus"], rel=1e-6)
    assert held_out.logprob.sum() == pytest.approx(KENLM_ON_LMPLZ["held_out"], rel=1e-6)
    unknown = [w for line in HELD_OUT for w in line.split() if w not in model.index]
    assert unknown == ["cat", "sat", "mat", "people", "people", "said"]
    assert held_out.oov.sum() == len(unknown)


def test_simple_good_turing_by_hand():
    # n1=4, n2=1: Z1 = 4/(0.5*2) = 4, Z2 = 1/(0.5*2) = 1, so log Z = log 4 - 2 log r (slope b = -2).
    # Smoothed r* = (r+1)((r+1)/r)^b: r*(1) = 0.5, r*(2) = 4/3. Turing r*(1) = 2 n2/n1 = 0.5 agrees,
    # so the smoothed values are used throughout.
    assert simple_good_turing({1: 4, 2: 1}) == pytest.approx({1: 0.5, 2: 4 / 3})
    # Renormalised so the seen mass is 1 - n1/N (N = 6): N' = 4*0.5 + 4/3 = 10/3,
    # d_r = (N - n1) r* / (N' r): d1 = 2*0.5/(10/3) = 0.3, d2 = 2*(4/3)/(10/3)/2 = 0.4.
    assert good_turing_discounts({1: 4, 2: 1}) == pytest.approx({1: 0.3, 2: 0.4})


def test_good_turing_unigrams_by_hand():
    # Counts a 1, b 1, c 1, </s> 1, d 2: n1=4, n2=1, N=6 as above; <unk> gets n1/N.
    model = train_ngram(corpus_from_lines(["a b c d d"]), 1, "good-turing")
    p = 10 ** model.logprob[0]
    idx = model.index
    assert p[idx["a"]] == pytest.approx(0.3 / 6)
    assert p[idx["d"]] == pytest.approx(0.4 * 2 / 6)
    assert p[UNK_ID] == pytest.approx(4 / 6)


def test_katz_discounts_by_hand():
    # k=2: common = (k+1) n3/n1 = 3*2/10 = 0.6; r*(1) = 2*4/10 = 0.8, r*(2) = 3*2/4 = 1.5;
    # d_r = (r*/r - common)/(1 - common): d1 = (0.8-0.6)/0.4 = 0.5, d2 = (0.75-0.6)/0.4 = 0.375.
    d, k = katz_discounts({1: 10, 2: 4, 3: 2, 4: 1}, k=2)
    assert k == 2 and d == pytest.approx({1: 0.5, 2: 0.375})
    # k=3: common = 4 n4/n1 = 0.4, r*(3) = 4 n4/n3 = 2, d3 = (2/3 - 0.4)/(1 - 0.4)
    d3, k3 = katz_discounts({1: 10, 2: 4, 3: 2, 4: 1}, k=3)
    assert k3 == 3 and d3[3] == pytest.approx((2 / 3 - 0.4) / 0.6)
    # r*(1) = 2*9/10 > 1 makes d1 > 1 for every k: Katz falls back to fewer discounted counts, then none.
    assert katz_discounts({1: 10, 2: 9, 3: 8}, k=2) == ({}, 0)


def test_katz_unseen_mass_is_n1_over_n():
    # Katz's renormalisation makes the discounted unigram mass n1/N; it goes to <unk>.
    # a..g and </s> once (n1 = 8), i j k twice (n2 = 3), l three times (n3 = 1), N = 17.
    # k=2: common = 3/8, d1 = (6/8 - 3/8)/(5/8) = 0.6, d2 = (1/2 - 3/8)/(5/8) = 0.2;
    # discounted mass 8*1*0.4 + 3*2*0.8 = 8 = n1.
    model = train_ngram(corpus_from_lines(["a b c d e f g i i j j k k l l l"]), 1, "katz", katz_k=2)
    assert model.info["orders"][0]["d"] == pytest.approx({1: 0.6, 2: 0.2})
    assert 10 ** model.logprob[0][UNK_ID] == pytest.approx(8 / 17)
    assert 10 ** model.logprob[0][model.index["i"]] == pytest.approx(0.2 * 2 / 17)


def test_add_k_and_witten_bell_closed_forms():
    lines = ["a b a c", "b a", "c c a b"]
    corpus = corpus_from_lines(lines)
    n_words = len(corpus.vocab) - 1  # a, b, c, </s>, <unk>
    add = train_ngram(corpus, 2, "add-k", k=0.5)
    # seen bigram 'a b' (count 2) after 'a' (4 followers: b, c, </s>, b): (2 + 0.5)/(4 + 0.5*5)
    assert 10 ** _entry(add, "a b")[0] == pytest.approx(2.5 / (4 + 0.5 * n_words))
    # 13 tokens with </s>; <unk> is the one unseen unigram: k / (N + k|V|)
    assert 10 ** _entry(add, "<unk>")[0] == pytest.approx(0.5 / (13 + 0.5 * n_words))
    wb = train_ngram(corpus, 2, "witten-bell")
    # p(b|a) = (c(a b) + T(a) p(b)) / (c(a) + T(a)), T(a) = 3 distinct followers (b, c, </s>);
    # p(b) = (c(b) + T/|V|) / (N + T) with T = 4 types (a, b, c, </s>)
    p_b = (3 + 4 / n_words) / (13 + 4)
    assert 10 ** _entry(wb, "a b")[0] == pytest.approx((2 + 3 * p_b) / (4 + 3))


def test_mle_gives_zero_to_unseen():
    model = train_ngram(corpus_from_lines(["a b", "b a"]), 2, "mle")
    scores = model.score_lines(["a a"])
    assert np.isneginf(scores.logprob[1])  # 'a a' never seen after a seen context 'a'
    assert math.isinf(scores.summary()["perplexity"])


def _random_context(rng: np.random.Generator, corpus, order: int) -> list[int]:
    """A history to condition on: a corpus prefix, random words, or one with <unk>."""
    length = int(rng.integers(0, order))
    choice = rng.random()
    if choice < 0.4:
        starts = np.flatnonzero(corpus.pos == 0)
        s = int(rng.choice(starts))
        return [int(x) for x in corpus.stream[s:s + 1 + length] if x != 2][: length + 1] or [BOS_ID]
    words = [int(x) for x in rng.integers(3, len(corpus.vocab), length)]
    if choice < 0.7:
        return [BOS_ID, *words]
    return [*words, UNK_ID] if choice < 0.85 else words


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sentences=st.lists(st.lists(st.integers(0, 12), min_size=0, max_size=9), min_size=1, max_size=12),
       order=st.integers(1, 4), smoothing=st.sampled_from(SMOOTHINGS), seed=st.integers(0, 2 ** 16))
def test_distributions_sum_to_one(sentences, order, smoothing, seed):
    lines = [" ".join(f"w{i}" for i in s) for s in sentences]
    corpus = corpus_from_lines(lines)
    assume(len(corpus.vocab) - 3 >= 2)
    model = train_ngram(corpus, order, smoothing, k=0.3, discount_fallback=True)
    rng = np.random.default_rng(seed)
    for _ in range(6):
        ctx = _random_context(rng, corpus, order)
        p = model.distribution(ctx)
        assert (p >= 0).all()
        # over every word but <s>, </s> and <unk> included
        assert p.sum() == pytest.approx(1.0, abs=1e-9), (smoothing, ctx)
        # the ARPA backoff scorer (used for perplexity) agrees with the full distribution
        hist = ctx if ctx and ctx[0] == BOS_ID else [BOS_ID, *ctx]
        w = int(rng.integers(2, model.V))
        stream = np.array([*hist, w], dtype=np.int64)
        lp = model.score_stream(stream, sentence_positions(stream))[-1]
        assert 10 ** lp == pytest.approx(model.distribution(hist)[w], rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("bad", [0, -2])
def test_order_below_one_is_an_error(bad):
    with pytest.raises(LmlabError, match="order must be at least 1"):
        train_ngram(corpus_from_lines(["a b"]), bad, "kn")


def test_bad_corpora_and_smoothing_are_errors():
    with pytest.raises(LmlabError, match="unknown smoothing"):
        train_ngram(corpus_from_lines(["a b"]), 2, "laplace")
    with pytest.raises(LmlabError, match="no words"):
        train_ngram(corpus_from_lines(["", "  "]), 2, "mkn")
    with pytest.raises(LmlabError, match="only one distinct word"):
        train_ngram(corpus_from_lines(["hello", "hello hello"]), 2, "witten-bell")
    with pytest.raises(LmlabError, match="--discount-fallback"):
        train_ngram(corpus_from_lines(["a b c", "a b"]), 2, "mkn")
    with pytest.raises(LmlabError, match="k > 0"):
        train_ngram(corpus_from_lines(["a b c", "a b"]), 2, "add-k", k=0)


def test_special_words_in_text_are_skipped_like_lmplz():
    corpus = corpus_from_lines(["a <s> b </s> <unk> c"])
    assert corpus.skipped_specials == 3
    assert [corpus.vocab[i] for i in corpus.stream] == ["<s>", "a", "b", "c", "</s>"]
