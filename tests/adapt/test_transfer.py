"""Transfer-lineage baselines: the logistic regression, the three featurisers, and the CLI, on a fake
sentiment archive (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize, sparse

from lmlab.adapt import transfer
from lmlab.adapt.logreg import _loss_and_grad, fit_logreg, select_logreg, standardize
from lmlab.data.labelled import Example, LabelledCorpus, get_labelled
from lmlab.errors import LmlabError
from lmlab.word2vec.vectors import WordVectors, save_word2vec_text
from tests.labelled_fixtures import FILLER, NEGATIVE, POSITIVE, fake_sentiment_archive


@pytest.fixture
def archive(tmp_path: Path, monkeypatch) -> Path:
    path = fake_sentiment_archive(tmp_path / "vader", n=400)
    monkeypatch.setenv("LMLAB_SENTIMENT_ARCHIVE", str(path))
    return path


# ------------------------------------------------------------------ logistic regression

def test_logreg_gradient_is_exact():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 5))
    onehot = np.eye(3)[rng.integers(0, 3, 30)]
    theta = rng.normal(size=5 * 3 + 3)
    for features in (x, sparse.csr_matrix(x)):
        err = optimize.check_grad(lambda t, f=features: _loss_and_grad(t, f, onehot, 0.1)[0],
                                  lambda t, f=features: _loss_and_grad(t, f, onehot, 0.1)[1], theta)
        assert err < 1e-5


def test_logreg_separates_separable_data_and_the_penalty_shrinks_weights():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 4))
    y = (x[:, 0] - 0.5 * x[:, 2] > 0).astype(int)
    weak, strong = fit_logreg(x, y, 2, l2=1e-4), fit_logreg(x, y, 2, l2=1.0)
    assert (weak.predict(x) == y).mean() > 0.97
    assert np.abs(strong.weights).sum() < np.abs(weak.weights).sum()
    # the validation split picks the strength: pure noise labels on validation favour neither, labels that
    # follow the rule favour the weakly penalised fit
    model, acc = select_logreg((x[:150], y[:150]), (x[150:], y[150:]), 2, grid=(10.0, 1e-3))
    assert model.l2 == 1e-3 and acc > 0.9
    with pytest.raises(LmlabError, match="one label per feature row"):
        fit_logreg(x, y[:10], 2, l2=1.0)


def test_standardize_uses_train_statistics():
    train = np.array([[1.0, 5.0], [3.0, 5.0]])
    a, b = standardize(train, np.array([[2.0, 6.0]]))
    assert np.allclose(a, [[-1.0, 0.0], [1.0, 0.0]]) and np.allclose(b, [[0.0, 1.0]])


# ------------------------------------------------------------------ features

def test_ngram_features():
    texts = ["a good film", "a bad film", "good good film", "nothing here"]
    f = transfer.NgramFeatures(texts, n=2, min_df=2)
    assert set(f.vocab) == {"a", "good", "film", "good film"}  # the other bigrams occur in one text only
    x = f(["a good film film", "unknown words only"]).toarray()
    assert np.isclose(np.linalg.norm(x[0]), 1.0) and not x[1].any()
    film, good = x[0, f.vocab["film"]], x[0, f.vocab["good"]]
    # film: tf 2 (1 + ln 2) but in 3 of 4 texts; good: tf 1 in 2 of 4: sublinear tf-idf
    assert film / good == pytest.approx((1 + np.log(2)) * (np.log(5 / 4) + 1) / (np.log(5 / 3) + 1))
    f2 = transfer.NgramFeatures(texts, n=2, min_df=1)
    assert {"a good", "bad film", "good good"} <= set(f2.vocab)
    with pytest.raises(LmlabError, match="lower --min-df"):
        transfer.NgramFeatures(texts, min_df=9)


def test_averaged_vectors_and_coverage():
    wv = WordVectors(["good", "bad"], np.array([[1.0, 0.0], [0.0, 2.0]]))
    f = transfer.AveragedVectors(wv)
    x = f(["Good, bad!", "nothing known", "good"])
    assert np.allclose(x, [[0.5, 1.0], [0.0, 0.0], [1.0, 0.0]])
    assert f.coverage() == pytest.approx(3 / 5)


# ------------------------------------------------------------------ the baselines on labelled data

def test_ngram_baseline_learns_the_fake_sentiment_and_transfers(archive):
    movies, amazon = get_labelled("sentiment-movies"), get_labelled("sentiment-amazon")
    result = transfer.ngram_logreg(movies, eval_on=[amazon])
    assert result.accuracy > 0.9 and result.macro_f1 > 0.9
    assert result.n_test == len(movies.examples("test")) and sum(map(sum, result.confusion)) == result.n_test
    assert result.transfer["sentiment-amazon"]["accuracy"] > 0.9  # the same words carry the sentiment
    assert json.loads(json.dumps(result.summary()))["method"] == "ngram-logreg"


def test_w2v_baseline_with_given_and_with_trained_vectors(archive):
    movies = get_labelled("sentiment-movies")
    words = POSITIVE + NEGATIVE + FILLER
    vecs = np.zeros((len(words), 3))
    vecs[: len(POSITIVE), 0] = 1.0
    vecs[len(POSITIVE): len(POSITIVE) + len(NEGATIVE), 0] = -1.0
    vecs[len(POSITIVE) + len(NEGATIVE):, 1:] = np.random.default_rng(0).normal(size=(len(FILLER), 2))
    given = transfer.w2v_avg(movies, WordVectors(words, vecs))
    assert given.accuracy > 0.9 and given.details["trained_here"] is False
    trained = transfer.w2v_avg(movies, dim=8, epochs=1, min_count=1)
    assert trained.details["trained_here"] and 0.0 <= trained.accuracy <= 1.0
    # the vectors come from the train split's text only: a word found only in test texts has none
    vocab = set(transfer.train_vectors(movies, dim=8, epochs=1, min_count=1).words)
    test_only = {w for e in movies.examples("test", "lm") for w in e.text.split()
                 if w[0] == "w" and w[1:].isdigit()}
    assert test_only and not test_only & vocab


def test_domain_transfer_needs_the_same_labels(archive):
    movies = get_labelled("sentiment-movies")
    other = LabelledCorpus("three-way", ["neg", "neu", "pos"], {s: [Example("x", 0)] for s in
                                                                ("train", "validation", "test")}, "made up")
    with pytest.raises(LmlabError, match="same label set"):
        transfer.ngram_logreg(movies, eval_on=[other])


@pytest.fixture(scope="module")
def elmo_run(tmp_path_factory) -> Path:
    """A tiny ELMo biLM trained for two steps on the train text of a small fake archive (ELMo features
    are computed text by text, so the archive is kept small)."""
    from lmlab.cli import main

    root = tmp_path_factory.mktemp("elmo")
    mp = pytest.MonkeyPatch()
    mp.setenv("LMLAB_SENTIMENT_ARCHIVE", str(fake_sentiment_archive(root / "vader", n=120)))
    mp.setenv("LMLAB_PEAK_FLOPS", "1e11")
    try:
        assert main(["data", "prepare", "--corpus", "sentiment-movies", "--tokenizer", "char",
                     "--out", str(root / "data")]) == 0
        assert main(["pretrain", "--model", "elmo-tiny", "--data", str(root / "data"),
                     "--out", str(root / "run"),
                     "--max-steps", "2", "--block-size", "16", "--batch-size", "2", "--eval-iters", "0",
                     "--precision", "fp32", "--device", "cpu", "--no-progress"]) == 0
    finally:
        mp.undo()
    return root


def test_elmo_baseline_uses_every_layer(elmo_run, monkeypatch, one_torch_thread):
    from lmlab.embed.contextual import contextual_embeddings
    from lmlab.loader import load

    monkeypatch.setenv("LMLAB_SENTIMENT_ARCHIVE", str(elmo_run / "vader" / "hutto_ICWSM_2014.tar.gz"))
    model, tok = load(elmo_run / "run")
    feats = transfer.ElmoFeatures(model, tok)(["good film", "a bad plot"])
    n_layers, width = model.config.n_layer + 1, 2 * model.config.d_model
    assert feats.shape == (2, n_layers * width)
    layers = contextual_embeddings(model, tok, "a bad plot", layer_weights="all").vectors
    assert np.allclose(feats[1], layers.mean(dim=1).reshape(-1).double().numpy())
    result = transfer.elmo_logreg(get_labelled("sentiment-movies"), elmo_run / "run")
    assert result.n_features == n_layers * width and 0.0 <= result.accuracy <= 1.0
    with pytest.raises(LmlabError, match="needs an ELMo run"):
        transfer.ElmoFeatures(object(), tok)


# ------------------------------------------------------------------ CLI

def test_cli_baseline_json_and_outputs(archive, cli, tmp_path: Path):
    out = tmp_path / "base"
    env = {"LMLAB_SENTIMENT_ARCHIVE": str(archive)}
    r = cli("transfer", "baseline", "--method", "ngram-logreg", "--data", "sentiment-movies",
            "--eval-on", "sentiment-tweets", "--out", out, "--json", env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["accuracy"] > 0.9 and "sentiment-tweets" in summary["transfer"]
    assert json.loads((out / "result.json").read_text()) == summary
    assert "method: ngram-logreg" in (out / "config.yaml").read_text()



def test_cli_w2v_baseline_reads_a_vectors_file(archive, tmp_path: Path, capsys):
    from lmlab.cli import main

    vectors = tmp_path / "v.txt"
    save_word2vec_text(vectors, WordVectors(["good", "bad"], np.array([[1.0], [-1.0]])))
    assert main(["transfer", "baseline", "--method", "w2v-avg", "--vectors", str(vectors)]) == 0
    out = capsys.readouterr().out
    assert "w2v-avg on sentiment-movies: test accuracy" in out and "2 features" not in out


@pytest.mark.parametrize("args, message", [
    (["--method", "elmo"], "--method elmo needs --ckpt"),
    (["--method", "ngram-logreg", "--ckpt", "x"], "--ckpt is for --method elmo"),
    (["--method", "elmo", "--vectors", "v.txt", "--ckpt", "x"], "--vectors is for --method w2v-avg"),
    (["--data", "no-such-corpus"], "unknown labelled data"),
])
def test_cli_bad_input(archive, args, message, capsys):
    from lmlab.cli import main

    assert main(["transfer", "baseline", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
