"""`lmlab seq2seq train --arch transformer`: the Vaswani Transformer on the built-in tasks, its run folder,
decoding (greedy and beam, through the lab's generation code) and cross-attention heat maps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.models.encdec import EncoderDecoder
from lmlab.seq2seq.tasks import EOS, TaskSpec, make_splits
from lmlab.seq2seq.train import TrainConfig, decode, encode_source, evaluate, load_run, pad_batch, train
from lmlab.seq2seq.transformer import cross_attention, joint_vocab, transformer_config
from lmlab.train.log import read_metrics

torch.set_num_threads(1)
SMALL = dict(task="reverse", arch="transformer", min_len=3, max_len=6, train_size=400, test_size=20,
             hidden=32, heads=4, layers=1, batch_size=16, eval_every=0, device="cpu")


def test_one_vocabulary_and_the_vaswani_design():
    task = make_splits(TaskSpec("addition", train_size=10, test_size=5)).task
    vocab = joint_vocab(task)
    assert set(vocab.chars) == set(task.src_chars) | set(task.tgt_chars)
    cfg = transformer_config(len(vocab), 64, 2, 4, 0.1)
    assert (cfg.pos, cfg.post_norm, cfg.embed_scale, cfg.act, cfg.tie_embeddings, cfg.init) == (
        "sinusoidal", True, True, "relu", True, "xavier")
    assert (cfg.pad_token_id, cfg.decoder_start_token_id, cfg.eos_token_id) == (0, 1, 2)


def test_cross_attention_weights_are_the_last_layer_s_distributions():
    torch.manual_seed(0)
    model = EncoderDecoder(transformer_config(12, 16, 2, 2, 0.0)).eval()
    weights, score = cross_attention(model, [3, 4, 5, EOS], [6, 7, EOS])
    assert weights.shape == (3, 4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    with torch.no_grad():
        logp = model(torch.tensor([[3, 4, 5, EOS]]), torch.tensor([[1, 6, 7]])).log_softmax(-1)[0]
    assert score == pytest.approx(float(logp[0, 6] + logp[1, 7] + logp[2, EOS]), abs=1e-5)


def test_train_run_folder_decoding_and_resume(tmp_path: Path):
    out = tmp_path / "run"
    summary = train(TrainConfig(out=out, steps=8, **SMALL))
    assert summary["arch"] == "transformer" and summary["steps"] == 8 and summary["parameters"] > 0
    assert json.loads((out / "model.json").read_text())["arch"] == "transformer"
    assert (out / "attention.png").read_bytes()[:4] == b"\x89PNG"
    run = load_run(out)
    assert isinstance(run.model, EncoderDecoder) and run.src_vocab.tokens == run.tgt_vocab.tokens
    src = pad_batch([encode_source(s, run.src_vocab) for s, _ in make_splits(run.spec).test[:6]])
    greedy = decode(run.model, src)
    assert [h.tokens for h in greedy] == [h.tokens for h in decode(run.model, src, beam=1, details=False)]
    assert all(h.attention.shape == (len(h.tokens), int((row != 0).sum())) for h, row in zip(greedy, src))
    beams = decode(run.model, src, beam=3, length_penalty=0.6)
    assert all(h.score <= 0 for h in beams)
    result = evaluate(run.model, make_splits(run.spec).test, run.src_vocab, run.tgt_vocab, beam=2)
    assert result.n == 20 and 0.0 <= result.exact_match <= 1.0
    with pytest.raises(LmlabError, match="options differ.*heads: run 4 vs now 2|n_head: run 4 vs now 2"):
        train(TrainConfig(out=out, steps=10, resume=True, **{**SMALL, "heads": 2}))
    assert train(TrainConfig(out=out, steps=10, resume=True, **SMALL))["steps"] == 10
    assert read_metrics(out)[-1]["step"] == 10
    with pytest.raises(LmlabError, match="--hidden 30 is not divisible by --heads 4"):
        train(TrainConfig(out=tmp_path / "x", steps=2, **{**SMALL, "hidden": 30}))


def test_cli_eval_and_translate_on_a_transformer_run(tmp_path: Path, capsys):
    from lmlab.cli import main

    run = str(tmp_path / "run")
    train(TrainConfig(out=Path(run), steps=5, **SMALL))
    assert main(["seq2seq", "eval", "--ckpt", run, "--beam", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 20
    heatmap = str(tmp_path / "h.png")
    args = ["seq2seq", "translate", "--ckpt", run, "--input", "abcd", "--heatmap", heatmap, "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["input"] == "abcd" and Path(heatmap).is_file()


@pytest.mark.slow
def test_transformer_learns_reverse_and_attends_along_the_anti_diagonal(tmp_path: Path):
    cfg = TrainConfig(task="reverse", arch="transformer", out=tmp_path / "run", steps=400, min_len=3,
                      max_len=8, train_size=5000, test_size=200, dropout=0.0, eval_every=0, device="cpu")
    summary = train(cfg)
    assert summary["test_exact_match"] > 0.95, summary
    run = load_run(tmp_path / "run")
    source = make_splits(run.spec).test[0][0]
    hyp = decode(run.model, pad_batch([encode_source(source, run.src_vocab)]))[0]
    n = len(source)
    assert run.tgt_vocab.decode(hyp.tokens) == source[::-1]
    assert hyp.attention[:n].argmax(-1).tolist() == list(range(n - 1, -1, -1))
