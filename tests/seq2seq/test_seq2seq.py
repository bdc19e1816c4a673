"""Bahdanau attention encoder-decoder: tasks, attention masking, decoding, training and the CLI."""

from __future__ import annotations

import datetime
import itertools
import json
from pathlib import Path

import pytest
import torch

from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.models.seq2seq import Seq2Seq, Seq2SeqConfig
from lmlab.seq2seq.tasks import BOS, EOS, TASKS, TaskSpec, Vocab, make_splits, task_vocabs
from lmlab.seq2seq.train import (
    TrainConfig,
    beam_decode,
    evaluate,
    greedy_decode,
    load_run,
    output_log_probs,
    pad_batch,
    train,
)
from lmlab.train.log import read_metrics

torch.set_num_threads(1)


def _random_model(src_vocab: int = 8, tgt_vocab: int = 7, seed: int = 0) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(Seq2SeqConfig(src_vocab, tgt_vocab, emb=8, hidden=12, attn=10, dropout=0.0)).eval()


def _sources(lengths: list[int], vocab: int = 8, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return pad_batch([torch.randint(3, vocab, (n,), generator=g).tolist() + [EOS] for n in lengths])


# ---------------------------------------------------------------- tasks


@pytest.mark.parametrize("name", list(TASKS))
def test_splits_are_deterministic_disjoint_and_correct(name: str) -> None:
    spec = TaskSpec(name, seed=3, train_size=400, test_size=100)
    splits = make_splits(spec)
    again = make_splits(spec)
    assert splits.train == again.train and splits.test == again.test
    train_src = {s for s, _ in splits.train}
    test_src = {s for s, _ in splits.test}
    assert len(train_src) == 400 and len(test_src) == 100 and not train_src & test_src
    # the test set depends on the seed and lengths only, not on the training-set size
    assert make_splits(TaskSpec(name, seed=3, train_size=50, test_size=100)).test == splits.test
    assert make_splits(TaskSpec(name, seed=4, train_size=400, test_size=100)).test != splits.test
    src_vocab, tgt_vocab = task_vocabs(splits.task)
    for src, tgt in splits.train + splits.test:
        src_vocab.encode(src)
        tgt_vocab.encode(tgt)
        if name == "reverse":
            assert tgt == src[::-1] and splits.min_len <= len(src) <= splits.max_len
        elif name == "sort":
            assert tgt == "".join(sorted(src))
        elif name == "addition":
            a, b = src.split("+")
            assert int(tgt) == int(a) + int(b)
            assert all(splits.min_len <= len(x) <= splits.max_len for x in (a, b))
        else:
            day = datetime.date.fromisoformat(tgt)
            assert datetime.date(1950, 1, 1) <= day <= datetime.date(2049, 12, 31)
            assert str(day.day) in src and (str(day.year) in src or f"{day.year % 100:02d}" in src)


def test_lengths_vary_within_range() -> None:
    splits = make_splits(TaskSpec("reverse", min_len=2, max_len=5, train_size=300, test_size=50))
    assert {len(s) for s, _ in splits.train} == {2, 3, 4, 5}
    dates = make_splits(TaskSpec("date", min_len=10, max_len=10, train_size=50, test_size=10))
    assert all(len(s) == 10 for s, _ in dates.train + dates.test)


def test_date_formats_include_the_documented_examples() -> None:
    splits = make_splits(TaskSpec("date", seed=0, train_size=3000, test_size=10))
    sources = {s for s, _ in splits.train}
    assert any("/" in s for s in sources) and any(", " in s for s in sources)
    assert all(len(t) == 10 and t[4] == "-" and t[7] == "-" for _, t in splits.train)


def test_task_errors() -> None:
    with pytest.raises(LmlabError, match="unknown task 'copy'.*reverse, sort, addition, date"):
        make_splits(TaskSpec("copy"))
    with pytest.raises(LmlabError, match="--max-len 65 is out of range.*1 to 64"):
        make_splits(TaskSpec("reverse", max_len=65))
    with pytest.raises(LmlabError, match="--min-len 0 is out of range"):
        make_splits(TaskSpec("sort", min_len=0))
    with pytest.raises(LmlabError, match="--min-len 6 is greater than --max-len 4"):
        make_splits(TaskSpec("reverse", min_len=6, max_len=4))
    with pytest.raises(LmlabError, match="too few distinct inputs"):
        make_splits(TaskSpec("addition", min_len=1, max_len=1, train_size=200, test_size=10))  # 100 exist
    with pytest.raises(LmlabError, match="--test-size must be at least 1"):
        make_splits(TaskSpec("reverse", test_size=0))


def test_vocab_names_unknown_character() -> None:
    vocab = Vocab.from_chars("abc")
    assert vocab.tokens[:3] == ["<pad>", "<s>", "</s>"]
    assert vocab.decode([*vocab.encode("cab"), EOS, 3]) == "cab"
    with pytest.raises(LmlabError, match=r"character 'z' \(position 1\).*'abc'"):
        vocab.encode("azb")
    with pytest.raises(LmlabError, match="character '<'"):
        vocab.encode("<s>")


# ---------------------------------------------------------------- model and decoding


def test_attention_sums_to_one_on_real_positions_and_is_zero_on_padding() -> None:
    model = _random_model()
    src = _sources([6, 2, 4])
    tgt_in = torch.tensor([[BOS, 3, 4, 5], [BOS, 5, 5, 6], [BOS, 6, 3, 4]])
    _, attention = model(src, tgt_in, return_attention=True)
    mask = (src != 0).unsqueeze(1).expand_as(attention)
    assert torch.all(attention[~mask] == 0)
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 4))
    assert torch.all(attention[mask] > 0)


def test_padding_does_not_change_the_output() -> None:
    model = _random_model()
    src = _sources([7, 3])
    tgt_in = torch.tensor([[BOS, 3, 4], [BOS, 4, 5]])
    batched = model(src, tgt_in)
    alone = model(src[1:, :4], tgt_in[1:])
    torch.testing.assert_close(batched[1:], alone, atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def partly_trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reverse run stopped early: its outputs have varied lengths and mistakes, so decoders can differ."""
    out = tmp_path_factory.mktemp("seq2seq") / "partly"
    train(TrainConfig(task="reverse", out=out, steps=120, min_len=3, max_len=8, train_size=2000,
                      test_size=100, hidden=32, emb=16, eval_every=0, device="cpu"))
    return out


def test_beam_of_one_equals_greedy(partly_trained: Path) -> None:
    run = load_run(partly_trained)
    src = pad_batch([run.src_vocab.encode(s) + [EOS] for s, _ in make_splits(run.spec).test])
    greedy = greedy_decode(run.model, src)
    assert len({len(g.tokens) for g in greedy}) > 3  # a meaningful comparison: outputs of many lengths
    for g, b in zip(greedy, beam_decode(run.model, src, beam=1)):
        assert g.tokens == b.tokens
        assert g.score == pytest.approx(b.score, abs=1e-9)
        torch.testing.assert_close(g.attention, b.attention)
    wider = beam_decode(run.model, src, beam=3)
    assert any(g.tokens != w.tokens for g, w in zip(greedy, wider))


@torch.no_grad()
def _sequence_log_prob(model: Seq2Seq, src: torch.Tensor, tokens: list[int]) -> float:
    logits = model(src, torch.tensor([[BOS, *tokens[:-1]]]))
    logp = output_log_probs(logits)[0]
    return float(logp[torch.arange(len(tokens)), torch.tensor(tokens)].double().sum())


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_wide_beam_finds_the_exhaustive_best(length_penalty: float) -> None:
    """With a beam wider than the number of outputs, beam search must return the best-scoring one."""
    model = _random_model(tgt_vocab=5, seed=7)  # two real output symbols: ids 3 and 4
    max_len = 3
    candidates = []
    for n in range(max_len):
        candidates += [[*p, EOS] for p in itertools.product([3, 4], repeat=n)]
    candidates += [list(p) for p in itertools.product([3, 4], repeat=max_len)]
    for seed in range(3):
        src = _sources([4], seed=seed)
        best = max(candidates, key=lambda y: _sequence_log_prob(model, src, y) / len(y) ** length_penalty)
        hyp = beam_decode(model, src, beam=len(candidates) + 1, max_len=max_len,
                          length_penalty=length_penalty)[0]
        assert hyp.tokens == best
        assert hyp.score == pytest.approx(_sequence_log_prob(model, src, best), abs=1e-5)


# ---------------------------------------------------------------- training


def test_learns_reverse_to_95_percent_exact_match(tmp_path: Path) -> None:
    cfg = TrainConfig(task="reverse", out=tmp_path / "run", steps=300, min_len=3, max_len=8, train_size=5000,
                      test_size=200, hidden=64, emb=32, dropout=0.0, eval_every=0, device="cpu")
    summary = train(cfg)
    assert summary["test_exact_match"] > 0.95, summary
    run = load_run(tmp_path / "run")
    splits = make_splits(run.spec)
    assert evaluate(run.model, splits.test, run.src_vocab, run.tgt_vocab).exact_match > 0.95
    assert evaluate(run.model, splits.test, run.src_vocab, run.tgt_vocab, beam=3).exact_match > 0.95
    records = read_metrics(tmp_path / "run")
    assert records[0]["loss"] > 3 * records[-1]["loss"] and "test_exact_match" in records[-1]
    # reversal attends along the anti-diagonal: output i looks at source position n-1-i
    source = splits.test[0][0]
    hyp = greedy_decode(run.model, pad_batch([run.src_vocab.encode(source) + [EOS]]))[0]
    n = len(source)
    assert hyp.attention[:n].argmax(-1).tolist() == list(range(n - 1, -1, -1))
    assert (tmp_path / "run" / "attention.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_continues_and_existing_run_is_protected(tmp_path: Path) -> None:
    base = dict(task="sort", out=tmp_path / "run", train_size=200, test_size=20, hidden=8, emb=8,
                batch_size=16, eval_every=0, device="cpu")
    train(TrainConfig(steps=6, **base))
    with pytest.raises(LmlabError, match="already holds a trained model.*--overwrite"):
        train(TrainConfig(steps=6, **base))
    assert train(TrainConfig(steps=3, overwrite=True, **base))["steps"] == 3
    train(TrainConfig(steps=6, overwrite=True, **base))
    with pytest.raises(LmlabError, match="--resume: options differ.*hidden: run 8 vs now 9"):
        train(TrainConfig(steps=9, resume=True, **{**base, "hidden": 9}))
    summary = train(TrainConfig(steps=9, resume=True, **base))
    assert summary["steps"] == 9
    assert read_metrics(tmp_path / "run")[-1]["step"] == 9
    with pytest.raises(LmlabError, match="no checkpoint to resume"):
        train(TrainConfig(steps=9, resume=True, **{**base, "out": tmp_path / "fresh"}))
    assert not (tmp_path / "fresh").exists()


# ---------------------------------------------------------------- CLI


def test_cli_train_eval_translate(cli, tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = cli("seq2seq", "train", "--task", "reverse", "--out", run, "--steps", "20", "--train-size", "300",
            "--test-size", "30", "--hidden", "16", "--emb", "8", "--min-len", "3", "--max-len", "5", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["steps"] == 20 and 0.0 <= summary["test_exact_match"] <= 1.0
    for name in ("model.safetensors", "model.json", "vocab.json", "task.json", "config.yaml", "metrics.jsonl",
                 "attention.png"):
        assert (run / name).is_file(), name

    r = cli("seq2seq", "eval", "--ckpt", run, "--beam", "2", "--json")
    assert r.returncode == 0, r.stderr
    figures = json.loads(r.stdout)
    assert figures["n"] == 30 and figures["beam"] == 2 and 0.0 <= figures["token_accuracy"] <= 1.0

    r = cli("seq2seq", "translate", "--ckpt", run, "--input", "abcd", "--heatmap", tmp_path / "h.png",
            "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["input"] == "abcd" and set(out["output"]) <= set("abcdefghijklmnopqrstuvwxyz")
    assert (tmp_path / "h.png").is_file()


def test_cli_errors(tmp_path: Path, partly_trained: Path, capsys: pytest.CaptureFixture) -> None:
    def error(*argv: str) -> str:
        assert main(list(argv)) == 2
        return capsys.readouterr().err

    assert "unknown task 'copy'" in error("seq2seq", "train", "--task", "copy", "--out", str(tmp_path / "a"))
    assert "out of range" in error("seq2seq", "train", "--out", str(tmp_path / "a"), "--max-len", "100")
    assert "--out" in error("seq2seq", "train")
    assert not (tmp_path / "a").exists()  # nothing is written when the options are wrong
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.json").write_text("{}")
    msg = error("seq2seq", "eval", "--ckpt", str(tmp_path / "half"))
    assert "missing model.safetensors, vocab.json, task.json" in msg
    assert "does not exist" in error("seq2seq", "translate", "--ckpt", str(tmp_path / "no"), "--input", "ab")
    assert "--ckpt" in error("seq2seq", "eval")
    run = str(partly_trained)
    msg = error("seq2seq", "translate", "--ckpt", run, "--input", "ab9d")
    assert "character '9' (position 2)" in msg and "'abcdefghijklmnopqrstuvwxyz'" in msg
    assert "--beam must be at least 1" in error("seq2seq", "eval", "--ckpt", run, "--beam", "0")
