"""Reward models: the Bradley-Terry loss, the head's init, the score read on the last real token
whatever the padding, and end to end: trained on human pairs from ratings, held-out pairwise accuracy
clearly above chance; scoring files and pairs; exact resume; bad input as one line."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch

import lmlab
from lmlab.align.reward import RewardModelScorer, bradley_terry_loss, load_scorer, pair_metrics
from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.models.heads import classifier_for
from tests.align.conftest import assert_resume_is_exact
from tests.labelled_fixtures import FILLER, NEGATIVE, POSITIVE, fake_sentiment_archive
from tests.markdown_tables import tables

FAST = ["--precision", "fp32", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def word_base(tmp_path_factory) -> Path:
    """A random 1-layer LLaMA (d 32) with a word tokenizer of the fake reviews' words (each review's
    unique tag is <unk>, so a reward model must learn the sentiment words, not the reviews)."""
    from lmlab.data.tokenizers import train_tokenizer
    from lmlab.models.registry import build_model, get_preset, save_model

    run = tmp_path_factory.mktemp("word-base")
    tok = train_tokenizer("word", iter([" ".join(POSITIVE + NEGATIVE + FILLER)]), min_frequency=1)
    torch.manual_seed(0)
    model = build_model(get_preset("llama-tiny", vocab_size=tok.vocab_size, d_model=32, n_layer=1, n_head=2,
                                   n_kv_heads=1, block_size=64))
    save_model(model, run / "model.safetensors")
    tok.save(run / "tokenizer.json")
    return run


@pytest.fixture(scope="module")
def reviews_archive(tmp_path_factory) -> Path:
    """A fake VADER archive with 600 rated sentences per set (about 60 per held-out split)."""
    return fake_sentiment_archive(tmp_path_factory.mktemp("vader600"), n=600)


@pytest.fixture
def reviews(reviews_archive, monkeypatch) -> None:
    monkeypatch.setenv("LMLAB_SENTIMENT_ARCHIVE", str(reviews_archive))
    monkeypatch.setenv("LMLAB_PEAK_FLOPS", "1e11")


@pytest.fixture(scope="module")
def trained_rm(word_base, reviews_archive, tmp_path_factory) -> tuple[Path, dict]:
    """A reward model trained on human pairs from the fake movie reviews' ratings, and its --json."""
    out = tmp_path_factory.mktemp("rm") / "rm"
    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(buf):
        mp.setenv("LMLAB_SENTIMENT_ARCHIVE", str(reviews_archive))
        assert main(["reward", "train", "--ckpt", str(word_base), "--data", "sentiment-movies",
                     "--out", str(out), "--max-steps", "50", "--batch-size", "16", "--lr", "3e-3",
                     "--log-interval", "1", *FAST, "--json"]) == 0
    return out, json.loads(buf.getvalue().strip().splitlines()[-1])


def test_bradley_terry_loss_closed_form():
    c, r = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([0.0, 1.0, 1.0])
    assert torch.allclose(bradley_terry_loss(c, r), torch.log1p(torch.exp(-(c - r))))
    assert float(bradley_terry_loss(c[:1], r[:1])) == pytest.approx(math.log(2))
    m = torch.tensor([1.0, 1.0, 1.0])
    assert torch.allclose(bradley_terry_loss(c, r, m), bradley_terry_loss(c - 1.0, r))
    figures = pair_metrics(c, r)
    assert figures["accuracy"] == pytest.approx(1 / 3)  # a tie is not a win
    assert figures["reward_gap"] == pytest.approx(-1 / 3)


def test_the_reward_head_init(tiny_base):
    backbone = lmlab.load(str(tiny_base))[0]
    torch.manual_seed(0)
    d = backbone.config.d_model
    rm = classifier_for(backbone, task="regress", dropout=0.0, head_std=1 / math.sqrt(d + 1))
    w, b = rm.head[-1].weight.detach(), rm.head[-1].bias.detach()
    assert w.shape == (1, d) and 0.5 / math.sqrt(d + 1) < float(w.std()) < 1.5 / math.sqrt(d + 1)
    assert float(b.abs().max()) == 0.0 and rm.config.head_std == pytest.approx(1 / math.sqrt(d + 1))
    with pytest.raises(LmlabError, match="head_std must be positive"):
        classifier_for(backbone, task="regress", head_std=0.0)


def test_the_score_is_read_on_the_last_real_token_whatever_the_padding(tiny_base):
    backbone, tok = lmlab.load(str(tiny_base))
    torch.manual_seed(1)
    scorer = RewardModelScorer(classifier_for(backbone, task="regress", dropout=0.0, head_std=0.2), tok, "rm")
    texts = ["a", "a much longer text than the first", "mid length", "a"]
    batched = scorer.score(texts)
    alone = torch.cat([scorer.score([t]) for t in texts])
    assert batched.dtype == torch.float32 and batched.shape == (4,)
    assert torch.allclose(batched, alone, atol=1e-5) and float(batched[0]) == float(batched[3])
    assert float(batched[0]) != float(batched[1])
    assert torch.equal(scorer.score_pairs(["a much ", "mid"], ["longer text than the first", " length"]),
                       scorer.score(["a much longer text than the first", "mid length"]))


def test_reward_model_beats_chance_on_held_out_human_pairs(trained_rm, reviews, capsys):
    out, r = trained_rm
    assert r["step"] == 50 and r["pairs"]["validation"] >= 40 and r["pairs"]["test"] >= 40
    assert r["first_loss"] == pytest.approx(math.log(2), abs=0.1)  # a small head starts near chance
    assert r["val"]["accuracy"] >= 0.7 and r["test"]["accuracy"] >= 0.7
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] and "val_accuracy" in rows[-1] and "accuracy" in rows[0]
    for name in ("config.yaml", "model.safetensors", "tokenizer.json", "results.json", "curves.png"):
        assert (out / name).is_file()
    report = (out / "report.md").read_text()  # the figures of --json per split, and the curves
    results = {row["metric"].replace("\\", ""): row for row in tables(report)["metric"]}
    for split, key in (("validation", "val"), ("test", "test")):
        assert int(results["pairs"][split]) == r["pairs"][split]
        for name in ("accuracy", "loss", "reward_gap"):
            assert float(results[name][split]) == pytest.approx(r[key][name], abs=1e-4)
    assert "](curves.png)" in report
    assert main(["reward", "score", "--ckpt", str(out), "--data", "sentiment-movies", "--pairs",
                 "--split", "test", "--device", "cpu", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scored["n"] == r["pairs"]["test"] and scored["accuracy"] == pytest.approx(r["test"]["accuracy"])


def test_scores_of_a_file_and_of_the_scorer_agree(trained_rm, tmp_path, capsys):
    out, _ = trained_rm
    scorer = load_scorer(str(out))
    assert scorer.name == str(out)
    good, bad = scorer.score(["the film was great", "the film was awful"])
    assert float(good) > float(bad)
    texts = tmp_path / "texts.txt"
    texts.write_text("the film was great\nthe film was awful\n")
    assert main(["reward", "score", "--ckpt", str(out), "--data", str(texts),
                 "--out", str(tmp_path / "s.jsonl"), "--device", "cpu", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    lines = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert r["n"] == 2 and lines[0]["score"] == pytest.approx(float(good), abs=1e-5)
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"prompt": "the film was", "response": " great"}) + "\n"
                       + json.dumps({"text": "the film was awful"}) + "\n")
    assert main(["reward", "score", "--ckpt", str(out), "--data", str(answers), "--device", "cpu",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["max"] == pytest.approx(float(good), abs=1e-5)
    assert r["min"] == pytest.approx(float(bad), abs=1e-5)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "the plot was", "chosen": " lovely", "rejected": " dull"}) + "\n")
    assert main(["reward", "score", "--ckpt", str(out), "--data", str(pairs), "--pairs", "--device", "cpu",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["n"] == 1 and r["accuracy"] in (0.0, 1.0)


def test_reward_training_resumes_exactly(word_base, reviews, tmp_path):
    common = ["reward", "train", "--ckpt", str(word_base), "--data", "sentiment-movies", "--max-steps", "6",
              "--batch-size", "4", "--max-pairs", "40", "--eval-max", "8", "--eval-interval", "2",
              "--margin-loss", "--deterministic", *FAST]
    assert_resume_is_exact(common, tmp_path)


@pytest.mark.parametrize("args, message", [
    (["--data", "nothing.jsonl"], "not a JSONL file of pairs"),
    (["--data", "{pairs}", "--margin-loss"], "--margin-loss needs pairs with a 'margin'"),
    (["--data", "{bad}"], "are the same text"),
])
def test_bad_reward_input_is_one_line(tiny_base, tmp_path, capsys, args, message):
    pairs, bad = tmp_path / "pairs.jsonl", tmp_path / "bad.jsonl"
    pairs.write_text("".join(json.dumps({"chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n"
                             for i in range(20)))
    bad.write_text(json.dumps({"prompt": "q", "chosen": "x", "rejected": "x"}) + "\n")
    args = [a.format(pairs=pairs, bad=bad) for a in args]
    assert main(["reward", "train", "--ckpt", str(tiny_base), *args, "--out", str(tmp_path / "rm"),
                 "--max-steps", "1", *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_load_scorer_refuses_what_is_no_reward_model(tiny_base):
    with pytest.raises(LmlabError, match="not a reward model"):
        load_scorer(str(tiny_base))
    with pytest.raises(LmlabError, match="not a reward-model run folder nor one of arithmetic"):
        load_scorer("no-such-reward")


def test_load_scorer_is_the_one_entry_for_verifiable_rewards_too():
    scorer = load_scorer("arithmetic")
    assert scorer.name == "arithmetic"
    assert scorer.score_pairs(["2+3=", "4*2="], [" 5 it is", "9"]).tolist() == [1.0, 0.0]
