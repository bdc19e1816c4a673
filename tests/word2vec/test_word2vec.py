"""word2vec training: vocabulary, subsampling and noise as gensim, the hand-written update rule against
autograd, pair building, learning planted structure, and the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lmlab.word2vec.model as w2v
from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.word2vec.commands import TrainConfig, train_params
from lmlab.word2vec.model import (
    COMPILE_WORDS,
    MAX_AUTO_THREADS,
    MAX_SENTENCE,
    Word2Vec,
    Word2VecParams,
    _spans,
    build_vocab,
    cbow_step,
    cpu_cores,
    encode_corpus,
    resolve_compile,
    resolve_threads,
    skipgram_step,
    train_word2vec,
)
from lmlab.word2vec.vectors import load_word2vec_text

GROUPS = 4
PER_GROUP = 8


def topic_corpus(n_sentences: int = 1500, seed: int = 0) -> list[list[str]]:
    """Sentences each drawn from one of four topics (word groups); words of a topic co-occur, others never."""
    rng = np.random.default_rng(seed)
    sentences = []
    for _ in range(n_sentences):
        g = rng.integers(GROUPS)
        sentences.append([f"g{g}w{i}" for i in rng.integers(PER_GROUP, size=rng.integers(6, 14))])
    return sentences


def group_margin(wv) -> float:
    """Mean cosine of same-topic word pairs minus mean cosine of different-topic pairs."""
    unit = wv.unit_vectors()
    groups = np.array([int(w[1]) for w in wv.words])
    sims = unit @ unit.T
    same = groups[:, None] == groups[None, :]
    off_diag = ~np.eye(len(groups), dtype=bool)
    return float(sims[same & off_diag].mean() - sims[~same].mean())


def neighbours_in_group(wv, k: int = 3) -> float:
    """Share of each word's k nearest neighbours that come from its own topic."""
    hits = [sum(n[1] == w[1] for n, _ in wv.most_similar(w, k)) for w in wv.words]
    return sum(hits) / (k * len(wv.words))


# ---------------------------------------------------------------- vocabulary, subsampling, noise


def test_vocab_counts_order_and_min_count():
    vocab, total = build_vocab([["b", "a", "b"], ["c", "a", "b", "d"]], min_count=2)
    assert total == 7
    assert vocab.words == ["b", "a"] and vocab.counts.tolist() == [3, 2]
    vocab, _ = build_vocab([["x", "y"]], min_count=1)
    assert vocab.words == ["x", "y"]  # ties keep first-appearance order


def test_vocab_errors():
    with pytest.raises(LmlabError, match="corpus has no words"):
        build_vocab([[], []], min_count=1)
    with pytest.raises(LmlabError, match="min-count 5 removes every word.*occurs 2 times"):
        build_vocab([["a", "a", "b"]], min_count=5)


def test_keep_probability_and_noise_distribution_equal_gensim():
    from gensim.models import Word2Vec as GensimWord2Vec

    sentences = topic_corpus(300) + [["the"] * 50 for _ in range(40)]
    g = GensimWord2Vec(vector_size=8, min_count=2, sample=1e-3, negative=5, workers=1)
    g.build_vocab(sentences)
    vocab, _ = build_vocab(sentences, min_count=2)
    ours = Word2Vec(vocab, Word2VecParams(dim=8, min_count=2, subsample=1e-3))
    idx = [g.wv.key_to_index[w] for w in vocab.words]
    theirs_keep = np.array([g.wv.get_vecattr(w, "sample_int") for w in vocab.words]) / (2**32 - 1)
    np.testing.assert_allclose(ours.keep_prob, theirs_keep, atol=1e-9)
    assert ours.keep_prob[0] < 0.2  # "the" is heavily subsampled
    theirs_noise = np.diff(np.concatenate([[0], g.cum_table])) / g.cum_table[-1]
    np.testing.assert_allclose(ours.noise_prob, theirs_noise[idx], atol=1e-7)
    table_share = np.bincount(ours.noise_table, minlength=len(vocab)) / len(ours.noise_table)
    np.testing.assert_allclose(table_share, ours.noise_prob, atol=1e-4)


def test_pairs_respect_window_and_sentences():
    sentences = [[f"w{i}" for i in range(12)], ["w0", "w1", "w2"]]
    vocab, _ = build_vocab(sentences, min_count=1)
    corpus = encode_corpus(sentences, vocab)
    model = Word2Vec(vocab, Word2VecParams(window=3, subsample=0, shrink_window=False, min_count=1))
    ids, owner, context, n = model._examples(corpus, corpus.chunks()[0], np.random.default_rng(0))
    assert n == 15
    piece = np.repeat([0, 1], [12, 3])
    pos = [np.nonzero(ids == c)[0] for c in context]  # not unique across sentences; check via counts
    assert len(owner) == sum(2 * sum(min(3, L - 1 - i) for i in range(L)) for L in (12, 3))
    assert len(pos) == len(owner)
    shrunk = Word2Vec(vocab, Word2VecParams(window=3, subsample=0, min_count=1))
    _, owner2, _, _ = shrunk._examples(corpus, corpus.chunks()[0], np.random.default_rng(0))
    assert 0 < len(owner2) < len(owner)  # dynamic windows are shorter on average
    # no pair crosses the sentence boundary: centres of the short sentence see only its own words
    short = owner[piece[owner] == 1]
    assert set(context[np.isin(owner, short)]) <= {vocab.index[w] for w in ("w0", "w1", "w2")}


def test_long_sentences_are_cut_and_chunks_cover_everything():
    vocab, _ = build_vocab([["a", "b"]], min_count=1)
    corpus = encode_corpus([["a", "b", "zzz"] * (MAX_SENTENCE // 2)], vocab)
    assert corpus.raw_words == 3 * (MAX_SENTENCE // 2) and len(corpus.ids) == MAX_SENTENCE
    assert np.diff(corpus.starts).max() <= MAX_SENTENCE
    chunks = corpus.chunks(size=1000)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(corpus.starts) - 1
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    assert _spans(10, 3) == [(0, 3), (3, 6), (6, 10)] and _spans(1, 3) == [(0, 1)]


# ---------------------------------------------------------------- the update rule


def _reference_loss(w_in, w_out, inputs, targets, noise_logit):
    """Summed negative-sampling (or NCE) loss of examples whose input vectors are given, by autograd."""
    scores = (inputs[:, None, :] * w_out[targets]).sum(-1)
    if noise_logit is not None:
        scores = scores - noise_logit[targets]
    keep = targets != targets[:, :1]
    keep[:, 0] = True
    signs = torch.ones_like(scores)
    signs[:, 1:] = -1
    return -(F.logsigmoid(signs * scores) * keep).sum()


@pytest.mark.parametrize("loss", ["ns", "nce"])
def test_skipgram_step_is_sgd_on_the_loss(loss):
    gen = torch.Generator().manual_seed(0)
    v, d, k, P, lr = 12, 6, 3, 40, 0.05
    w_in = torch.randn(v, d, dtype=torch.float64, generator=gen)
    w_out = torch.randn(v, d, dtype=torch.float64, generator=gen)
    center = torch.randint(v, (P,), generator=gen)
    context = torch.randint(v, (P,), generator=gen)
    noise = torch.randint(v, (P, k), generator=gen, dtype=torch.int32)
    noise[0, 0] = center[0]  # a noise word equal to the true word is skipped
    noise_logit = torch.randn(v, dtype=torch.float64, generator=gen) if loss == "nce" else None
    a, b = w_in.clone().requires_grad_(), w_out.clone().requires_grad_()
    targets = torch.cat([center[:, None], noise.long()], 1)
    ref = _reference_loss(a, b, a[context], targets, noise_logit)
    ref.backward()
    lr_t = torch.tensor(lr, dtype=torch.float64)
    got = skipgram_step(w_in, w_out, center, context, noise, lr_t, noise_logit)
    assert got.sum().item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(w_in, a.detach() - lr * a.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(w_out, b.detach() - lr * b.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mean", [True, False])
def test_cbow_step_is_gensims_rule(mean):
    """CBOW: output vectors take the exact gradient; every context vector takes the error of the
    hidden layer (the gradient w.r.t. the mean, or w.r.t. the sum divided by the count), as gensim."""
    gen = torch.Generator().manual_seed(1)
    v, d, k, C, lr = 15, 5, 4, 9, 0.1
    w_in = torch.randn(v, d, dtype=torch.float64, generator=gen)
    w_out = torch.randn(v, d, dtype=torch.float64, generator=gen)
    counts = torch.randint(1, 5, (C,), generator=gen)
    owner = torch.repeat_interleave(torch.arange(C), counts)
    context = torch.randint(v, (len(owner),), generator=gen)
    center = torch.randint(v, (C,), generator=gen)
    noise = torch.randint(v, (C, k), generator=gen, dtype=torch.int32)
    h = torch.zeros(C, d, dtype=torch.float64).index_add_(0, owner, w_in[context])
    if mean:
        h = h / counts[:, None]
    h.requires_grad_()
    b = w_out.clone().requires_grad_()
    ref = _reference_loss(None, b, h, torch.cat([center[:, None], noise.long()], 1), None)
    ref.backward()
    err = -lr * h.grad if mean else -lr * h.grad / counts[:, None]
    expected_in = w_in.clone().index_add_(0, context, err[owner])
    got = cbow_step(w_in, w_out, center, context, owner, counts.double(), noise,
                    torch.tensor(lr, dtype=torch.float64), None, mean)
    assert got.sum().item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(w_out, b.detach() - lr * b.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(w_in, expected_in, rtol=0, atol=1e-12)


def test_learning_rate_decays_linearly():
    vocab, _ = build_vocab([["a", "b"]], min_count=1)
    model = Word2Vec(vocab, Word2VecParams(lr=0.1, min_lr=0.001, min_count=1))
    assert model._lr(0, 100).item() == pytest.approx(0.1)
    assert model._lr(50, 100).item() == pytest.approx(0.0505)
    assert model._lr(100, 100).item() == pytest.approx(0.001)


# ---------------------------------------------------------------- learning planted structure


@pytest.mark.parametrize("arch, loss", [("skipgram", "ns"), ("cbow", "ns"), ("skipgram", "nce"),
                                        ("cbow", "nce")])
def test_words_that_co_occur_end_up_closer(arch, loss):
    params = Word2VecParams(arch=arch, loss=loss, dim=16, window=4, negative=5, min_count=1, epochs=3,
                            subsample=0, lr=0.05, seed=3)
    wv, stats = train_word2vec(topic_corpus(), params, progress=False)
    assert len(wv) == GROUPS * PER_GROUP and wv.dim == 16
    assert stats.words == stats.effective_words == sum(map(len, topic_corpus())) * 3
    assert group_margin(wv) > 0.3
    assert neighbours_in_group(wv) > 0.9
    assert 0 < stats.loss < 5


def test_untrained_vectors_show_no_structure():
    """The planted-structure check fails without training (so it can fail)."""
    vocab, _ = build_vocab(topic_corpus(), min_count=1)
    wv = Word2Vec(vocab, Word2VecParams(dim=16, min_count=1)).word_vectors()
    assert abs(group_margin(wv)) < 0.1
    assert neighbours_in_group(wv) < 0.6


def test_seed_determinism_and_hogwild_threads():
    params = Word2VecParams(dim=12, window=3, min_count=1, epochs=2, subsample=0, batch=128, seed=5)
    a, _ = train_word2vec(topic_corpus(600), params, progress=False)
    b, _ = train_word2vec(topic_corpus(600), params, progress=False)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    params.threads = 2
    c, stats = train_word2vec(topic_corpus(), params, progress=False)
    assert stats.words == sum(map(len, topic_corpus())) * 2
    assert group_margin(c) > 0.3


def test_subsampling_drops_frequent_words():
    sentences = [s + ["the"] * 6 for s in topic_corpus(800)]
    params = Word2VecParams(dim=8, min_count=1, epochs=1, subsample=1e-3)
    _, stats = train_word2vec(sentences, params, progress=False)
    assert stats.words == sum(map(len, sentences))
    assert stats.effective_words < 0.75 * stats.words


def test_invalid_params():
    with pytest.raises(LmlabError, match="subsample must be in"):
        Word2VecParams(subsample=2.0).check()
    with pytest.raises(LmlabError, match="negative must be at least 1"):
        Word2VecParams(negative=0).check()


def _no_cpp_compiler() -> str | None:
    """Why torch.compile (inductor) cannot build CPU code here, or None when it can."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as e:  # inductor raises its own types when no compiler is found
        return f"torch.compile needs a C++ compiler, none found ({type(e).__name__}: {e})"
    return None


def test_compiled_training_quick():
    """Fast check of compile=True: the steps really ran compiled and match eager training."""
    if reason := _no_cpp_compiler():
        pytest.skip(reason)
    params = Word2VecParams(arch="skipgram", dim=8, window=2, min_count=1, epochs=1, batch=100, seed=3,
                            threads=1)
    eager, _ = train_word2vec(topic_corpus(60), params, progress=False)
    params.compile = True
    compiled, stats = train_word2vec(topic_corpus(60), params, progress=False)
    assert stats.compiled  # not the eager fallback taken when compiling fails
    np.testing.assert_allclose(compiled.vectors, eager.vectors, atol=1e-5)


# ---------------------------------------------------------------- compiled or plain step, threads


def test_default_flags_compile_from_the_threshold_on_and_then_use_every_core():
    defaults = train_params(TrainConfig())
    assert defaults.compile is None and defaults.threads == 0  # auto, as Word2VecParams' own defaults
    assert Word2VecParams().compile is None and Word2VecParams().threads == 0
    for arch in ("skipgram", "cbow"):
        params = Word2VecParams(arch=arch)
        assert not resolve_compile(params, COMPILE_WORDS[arch] - 1)
        assert resolve_compile(params, COMPILE_WORDS[arch])
    assert COMPILE_WORDS["skipgram"] <= 453_000 * 5  # the benchmark's wiki-slice, 5 epochs, compiles
    assert COMPILE_WORDS["cbow"] <= 453_000 * 5
    assert resolve_compile(Word2VecParams(compile=False), 10**12) is False
    assert resolve_compile(Word2VecParams(compile=True), 1) is True
    cores = min(cpu_cores(), MAX_AUTO_THREADS)
    assert resolve_threads(Word2VecParams(), compiled=True) == cores
    assert resolve_threads(Word2VecParams(), compiled=False) == 1  # the plain step holds the GIL
    assert resolve_threads(Word2VecParams(threads=3), compiled=False) == 3


def _fake_compile(calls: list):
    """A stand-in for torch.compile that records its options and returns the function unchanged
    (wrapped, so that it counts as compiled)."""
    def compile_(fn, **kwargs):
        calls.append(kwargs)
        return lambda *args: fn(*args)
    return compile_


@pytest.mark.parametrize("arch", ["skipgram", "cbow"])
def test_default_flags_choose_the_compiled_step_when_the_compiler_works(arch, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(torch, "compile", _fake_compile(calls))
    monkeypatch.setattr(w2v, "_COMPILED", {})
    monkeypatch.setattr(w2v, "COMPILE_WORDS", {"skipgram": 5000, "cbow": 5000})
    params = Word2VecParams(arch=arch, dim=8, window=3, min_count=1, epochs=1)
    _, stats = train_word2vec(topic_corpus(600), params, progress=False)  # ~5.7K words: compiled
    assert stats.compiled and len(calls) == 1
    assert stats.threads == resolve_threads(params, compiled=True)
    assert calls[0]["options"] == ({"cpp_wrapper": True} if stats.threads > 1 else None)
    _, stats = train_word2vec(topic_corpus(400), params, progress=False)  # ~3.8K words: plain
    assert not stats.compiled and stats.threads == 1 and stats.compile_seconds == 0
    params.epochs = 2
    _, stats = train_word2vec(topic_corpus(400), params, progress=False)
    assert stats.compiled and len(calls) == 1  # the compiled step is reused within the process
    assert capsys.readouterr().err == ""


def test_a_failing_compiler_falls_back_to_the_plain_step_with_a_one_line_notice(monkeypatch, capsys):
    def broken(fn, **kwargs):
        raise RuntimeError("Compiler: cc is not found.\nsecond line of the traceback text")

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(w2v, "_COMPILED", {})
    monkeypatch.setattr(w2v, "COMPILE_WORDS", {"skipgram": 0, "cbow": 0})
    params = Word2VecParams(dim=16, window=4, min_count=1, epochs=3, subsample=0, seed=3)
    wv, stats = train_word2vec(topic_corpus(), params, progress=False)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torch.compile failed (RuntimeError: Compiler: cc is not found.)" in err
    assert "plain step" in err
    assert not stats.compiled and stats.threads == 1 and group_margin(wv) > 0.3
    train_word2vec(topic_corpus(300), params, progress=False)  # no second attempt, no second notice
    assert capsys.readouterr().err == ""
    params.compile = False
    plain, _ = train_word2vec(topic_corpus(), params, progress=False)
    np.testing.assert_array_equal(plain.vectors, wv.vectors)  # the same training as --compile off


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["skipgram", "cbow"])
def test_compiled_step_equals_eager(arch):
    """torch.compile'd training gives the same vectors as eager (up to float rounding)."""
    params = Word2VecParams(arch=arch, dim=12, window=3, min_count=1, epochs=1, batch=200, seed=2, threads=1)
    eager, _ = train_word2vec(topic_corpus(400), params, progress=False)
    params.compile = True
    compiled, _ = train_word2vec(topic_corpus(400), params, progress=False)
    np.testing.assert_allclose(compiled.vectors, eager.vectors, atol=1e-5)


# ---------------------------------------------------------------- CLI


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "topics.txt"
    path.write_text("\n".join(" ".join(s).upper() for s in topic_corpus()) + "\n\n")
    return path


def test_cli_train_eval_neighbors(tmp_path, text_file, capsys):
    out = tmp_path / "vecs.txt"
    rc = main(["word2vec", "train", "--text", str(text_file), "--out", str(out), "--lowercase", "--dim", "16",
               "--window", "4", "--epochs", "3", "--min-count", "1", "--subsample", "0", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["vocab"] == 32 and summary["words_per_s"] > 0
    assert (tmp_path / "vecs.txt.config.yaml").read_text().count("arch: skipgram") == 1
    wv = load_word2vec_text(out)
    assert wv.words[0].startswith("g") and group_margin(wv) > 0.3

    analogies = tmp_path / "q.txt"
    analogies.write_text(": same-topic\ng0w0 g0w1 g1w0 g1w1\nG2W3 g2w4 g3w3 g3w4\ng0w0 g0w1 g0w2 unknown\n")
    sims = tmp_path / "s.tsv"
    sims.write_text("# comment\ng0w0\tg0w1\t9\ng0w0\tg1w1\t1\ng2w2\tg2w5\t8\ng3w0\tg1w0\t2\nx\ty\t3\n")
    rc = main(["word2vec", "eval", "--vectors", str(out), "--analogies", str(analogies), "--similarity",
               str(sims), "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["analogies"]["questions"] == 3 and result["analogies"]["oov"] == 1
    assert result["analogies"]["sections"]["same-topic"]["evaluated"] == 2
    assert result["similarity"]["pairs"] == 4 and result["similarity"]["oov"] == 1
    assert result["similarity"]["spearman"] > 0.7  # same-topic pairs score higher, as the gold scores say

    assert main(["word2vec", "neighbors", "--vectors", str(out), "--word", "g1w2", "--k", "3", "--json"]) == 0
    neighbours = json.loads(capsys.readouterr().out)["neighbors"]
    assert len(neighbours) == 3 and all(n["word"].startswith("g1") for n in neighbours)
    assert main(["word2vec", "eval", "--vectors", str(out), "--analogies", str(analogies), "--similarity",
                 str(sims)]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_cli_errors(tmp_path, text_file, capsys):
    out = tmp_path / "v.txt"
    cases = [
        (["word2vec", "train", "--text", str(text_file), "--out", str(out), "--min-count", "100000"],
         "removes every word"),
        (["word2vec", "train", "--text", str(tmp_path / "none.txt"), "--out", str(out)], "does not exist"),
        (["word2vec", "train", "--out", str(out)], "exactly one of --text FILE or --corpus NAME"),
    ]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    cases.append((["word2vec", "train", "--text", str(empty), "--out", str(out)], "corpus has no words"))
    bad = tmp_path / "bad.txt"
    bad.write_text("2 3\na 1 2 3\nb 1 2\n")
    cases.append((["word2vec", "eval", "--vectors", str(bad), "--analogies", str(bad),
                   "--similarity", str(bad)], "bad.txt:3: expected a word and 3 numbers"))
    good = tmp_path / "good.txt"
    good.write_text("2 2\na 1 0\nb 0 1\n")
    cases.append((["word2vec", "neighbors", "--vectors", str(good), "--word", "zebra"],
                  "'zebra' is not in the vocabulary"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err
    assert not out.exists()


def test_corpus_option_reads_a_local_corpus(tmp_path, text_corpus, capsys):
    out = tmp_path / "c.txt"
    assert main(["word2vec", "train", "--corpus", str(text_corpus), "--out", str(out), "--min-count", "2",
                 "--dim", "8", "--epochs", "1", "--json"]) == 0
    wv = load_word2vec_text(out)
    assert "quick" in wv and "document" in wv and all(w == w.lower() for w in wv.words)
    assert "fox." not in wv and "🦊🐶" not in wv  # split into words: no punctuation, no emoji
