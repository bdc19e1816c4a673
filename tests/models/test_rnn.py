"""Tests of the RNN/LSTM/GRU LMs and truncated BPTT: streams, carried state, training, exact resume, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.models import build_model, get_preset, load_model, save_model
from lmlab.models.registry import preset_names
from lmlab.models.rnn import RNNLM, RNNConfig, SequenceDropout, embedding_dropout
from lmlab.nn.losses import token_cross_entropy
from lmlab.train.bptt import (
    CarriedStateLoss,
    StreamWindows,
    TruncatedBPTT,
    decode_state,
    encode_state,
    stream_nll,
)
from lmlab.train.log import read_metrics
from lmlab.train.loop import Trainer, TrainSettings
from lmlab.train.options import OptimOptions

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def settings(steps: int, **kw) -> TrainSettings:
    values = dict(optim=OptimOptions(lr=1e-2, min_lr=1e-3, warmup_steps=5, weight_decay=0.0), max_steps=steps,
                  precision="fp32", show_progress=False, log_interval=1)
    return TrainSettings(**{**values, **kw})


def tiny(cell: str = "lstm", **kw) -> RNNLM:
    return RNNLM(RNNConfig(**{**dict(vocab_size=40, cell=cell, n_layer=2, d_emb=8, d_hidden=12), **kw}))


def unigram_entropy(tokens: np.ndarray) -> float:
    counts = np.bincount(np.asarray(tokens)).astype(float)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# ---------------------------------------------------------------- the batch source
def test_stream_windows_are_contiguous_per_row_and_wrap_into_a_new_epoch():
    tokens = np.arange(103)
    src = StreamWindows(tokens, block_size=5, batch_size=4)
    assert src.stream_len == 25 and src.windows_per_epoch == 5  # (103 - 1) // 4 tokens per stream
    batches = [src.next() for _ in range(6)]
    first = batches[0]
    assert first["input_ids"][:, 0].tolist() == [0, 25, 50, 75]  # each row starts its own stream
    assert bool(first["reset"]) and not any(bool(b["reset"]) for b in batches[1:5])
    for b in batches[:5]:
        assert torch.equal(b["labels"], b["input_ids"] + 1)  # labels are the next tokens
    for prev, cur in zip(batches[:4], batches[1:5]):
        # window k+1 of stream b continues window k: its first input is window k's last label
        assert torch.equal(cur["input_ids"][:, 0], prev["labels"][:, -1])
    assert bool(batches[5]["reset"]) and torch.equal(batches[5]["input_ids"], first["input_ids"])
    assert src.epoch == 1 and src.window == 1


def test_stream_windows_split_streams_over_ranks_and_resume():
    tokens = np.arange(1000)
    whole = StreamWindows(tokens, block_size=7, batch_size=4)
    ranks = [StreamWindows(tokens, block_size=7, batch_size=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        b = whole.next()["input_ids"]
        assert torch.equal(b[0::2], ranks[0].next()["input_ids"])
        assert torch.equal(b[1::2], ranks[1].next()["input_ids"])
    again = StreamWindows(tokens, block_size=7, batch_size=4)
    again.load_state_dict(whole.state_dict())
    assert torch.equal(again.next()["input_ids"], whole.next()["input_ids"])
    with pytest.raises(LmlabError, match="same --block-size"):
        StreamWindows(tokens, block_size=8, batch_size=4).load_state_dict(whole.state_dict())
    with pytest.raises(LmlabError, match="too few"):
        StreamWindows(np.arange(20), block_size=8, batch_size=4)


# ---------------------------------------------------------------- the model
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_forward_with_and_without_state(cell):
    torch.manual_seed(0)
    model = tiny(cell).eval()
    ids = torch.randint(0, 40, (3, 9))
    logits = model(ids)
    assert isinstance(logits, torch.Tensor) and logits.shape == (3, 9, 40)
    out, state = model(ids, return_state=True)
    assert torch.equal(out, logits)
    assert len(state) == (2 if cell == "lstm" else 1) and all(s.shape == (2, 3, 12) for s in state)
    # Carrying the state across a split gives exactly the logits of the whole sequence.
    a, s = model(ids[:, :4], return_state=True)
    b, _ = model(ids[:, 4:], s)
    assert torch.allclose(torch.cat([a, b], dim=1), logits, atol=1e-6)
    with pytest.raises(LmlabError, match="recurrent state has shapes"):
        model(ids, tuple(x[:, :2] for x in state))


def test_tied_embeddings_with_projection_and_param_count():
    tied = tiny(d_emb=8, d_hidden=12)
    assert tied.head.weight is tied.emb.weight and tied.proj is not None
    assert tied.proj.weight.shape == (8, 12)
    untied = tiny(tie_embeddings=False)
    assert untied.proj is None and untied.head.weight.shape == (40, 12)
    unique = sum(p.numel() for p in {id(p): p for p in tied.parameters()}.values())
    assert tied.num_params() == unique
    assert tied.num_params(non_embedding=True) == unique - 40 * 8
    assert untied.num_params(non_embedding=True) == untied.num_params() - 40 * 8 - 40 * 12
    same = tiny(d_emb=12, d_hidden=12)
    assert same.proj is None and same.head.weight is same.emb.weight


def test_embedding_and_locked_dropout():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(20, 6)
    idx = torch.tensor([[3, 5, 3, 7, 5, 3]])
    out = embedding_dropout(emb, idx, 0.5, training=True)
    for t in range(idx.size(1)):
        row = out[0, t]
        assert torch.equal(row, torch.zeros(6)) or torch.allclose(row, 2 * emb.weight[idx[0, t]])
    # The same word is dropped or kept everywhere in the batch.
    assert torch.equal(out[0, 0], out[0, 2]) and torch.equal(out[0, 1], out[0, 4])
    assert torch.equal(embedding_dropout(emb, idx, 0.5, training=False), emb(idx))
    drop = SequenceDropout(0.5, locked=True).train()
    y = drop(torch.ones(2, 5, 8))
    assert torch.equal(y, y[:, :1].expand_as(y))  # one mask for every time step
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(drop.eval()(torch.ones(2, 5, 8)), torch.ones(2, 5, 8))


# ---------------------------------------------------------------- carried state
@torch.no_grad()
def test_carried_state_loss_equals_the_loss_of_the_whole_stream():
    torch.manual_seed(0)
    model = tiny().eval()
    tokens = np.random.default_rng(0).integers(0, 40, size=2 * 30 + 1)
    src = StreamWindows(tokens, block_size=10, batch_size=2)
    loss = CarriedStateLoss()
    per_window = [float(loss(model, src.next())) for _ in range(3)]
    # The same 30 positions per stream in one forward pass from a zero state.
    rows = torch.from_numpy(np.stack([tokens[0:31], tokens[30:61]]).astype(np.int64))
    full = token_cross_entropy(model(rows[:, :-1]), rows[:, 1:], reduction="none")
    expect = [float(full[:, k * 10:(k + 1) * 10].mean()) for k in range(3)]
    assert per_window == pytest.approx(expect, abs=1e-5)
    # A new epoch starts from zeros again.
    assert float(loss(model, src.next())) == pytest.approx(expect[0], abs=1e-5)
    # Without carrying, every window starts from zeros.
    reset = CarriedStateLoss(carry=False)
    src2 = StreamWindows(tokens, block_size=10, batch_size=2)
    reset(model, src2.next())
    second = float(reset(model, src2.next()))
    fresh = token_cross_entropy(model(rows[:, 10:20]), rows[:, 11:21])
    assert second == pytest.approx(float(fresh), abs=1e-5) and second != pytest.approx(expect[1], abs=1e-4)


def test_state_round_trips_through_json_text_exactly():
    state = (torch.randn(2, 3, 4), torch.randn(2, 3, 4).to(torch.bfloat16))
    back = decode_state(encode_state(state))
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(state, back))
    assert decode_state(encode_state(None)) is None


def test_carried_state_changes_training(char_data, tmp_path):
    def run(carry: bool):
        torch.manual_seed(0)
        model = build_model(get_preset("lstm-tiny", vocab_size=char_data.vocab_size))
        bptt = TruncatedBPTT(char_data.train, block_size=16, batch_size=4, carry=carry)
        Trainer(model, bptt.objective, bptt, settings(6), out_dir=tmp_path / str(carry), device=CPU).fit()
        return model, [r["loss"] for r in read_metrics(tmp_path / str(carry))]

    carried, loss_c = run(True)
    reset, loss_r = run(False)
    assert loss_c[0] == loss_r[0]  # the first window starts from zeros either way
    assert loss_c[1:] != loss_r[1:]
    assert not torch.equal(carried.layers[0].weight_hh_l0, reset.layers[0].weight_hh_l0)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_training_loss_falls_through_the_trainer(cell, char_data, tmp_path):
    torch.manual_seed(0)
    model = build_model(get_preset(f"{cell}-tiny", vocab_size=char_data.vocab_size))
    bptt = TruncatedBPTT(char_data.train, block_size=32, batch_size=8)
    Trainer(model, bptt.objective, bptt, settings(100), out_dir=tmp_path, device=CPU).fit()
    losses = [r["loss"] for r in read_metrics(tmp_path)]
    assert losses[0] > np.log(char_data.vocab_size) - 0.5
    # Below the unigram entropy by a margin only a model that reads its context reaches.
    assert np.mean(losses[-5:]) < unigram_entropy(char_data.train) - 1.0
    nats, count = stream_nll(model, char_data.val, block_size=64, batch_size=4)
    assert nats / count < unigram_entropy(char_data.train) - 1.0


def test_exact_resume_restores_the_carried_state(char_data, tmp_path):
    def trainer(out, **kw):
        torch.manual_seed(0)
        model = build_model(get_preset("gru-tiny", vocab_size=char_data.vocab_size))
        bptt = TruncatedBPTT(char_data.train, block_size=16, batch_size=4)
        return model, bptt, Trainer(model, bptt.objective, bptt, settings(8, **kw), out_dir=out, device=CPU)

    straight, bptt_a, t = trainer(tmp_path / "a")
    t.fit()
    _, _, first = trainer(tmp_path / "b", stop_at_step=4)
    first.fit()
    resumed, bptt_b, second = trainer(tmp_path / "b")
    second.fit(resume=True)
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name
    assert all(torch.equal(a, b) for a, b in zip(bptt_a.objective.state, bptt_b.objective.state))
    assert bptt_a.windows.state_dict() == bptt_b.windows.state_dict()


def test_stream_nll_does_not_depend_on_the_window_length():
    torch.manual_seed(0)
    model = tiny("gru")
    tokens = np.random.default_rng(1).integers(0, 40, size=301)
    a = stream_nll(model, tokens, block_size=7, batch_size=3)
    b = stream_nll(model, tokens, block_size=1000, batch_size=3)
    assert a[1] == b[1] == 300 and a[0] == pytest.approx(b[0], rel=1e-5)
    assert model.training  # mode restored


# ---------------------------------------------------------------- presets and files
def test_presets_and_bad_inputs(tmp_path):
    for name in ("rnn-small", "lstm-small", "gru-small"):
        cfg = get_preset(name, vocab_size=100)
        assert isinstance(cfg, RNNConfig) and cfg.cell == name.split("-")[0]
    assert {"nplm-small", "rnn-small", "lstm-small", "gru-small", "elmo-small"} <= set(preset_names())
    with pytest.raises(LmlabError, match="unknown model preset 'lstm-big'.*lstm-small"):
        get_preset("lstm-big")
    with pytest.raises(LmlabError, match="cell 'transformer' is not one of rnn, lstm, gru"):
        RNNConfig(cell="transformer")
    with pytest.raises(LmlabError, match=r"dropout_out=1.5 must be in \[0, 1\)"):
        RNNConfig(dropout_out=1.5)
    with pytest.raises(LmlabError, match=r"shape \(batch, time\)"):
        tiny()(torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("tie", [True, False])
def test_save_load_round_trip(tmp_path, tie):
    torch.manual_seed(0)
    model = tiny("lstm", tie_embeddings=tie).eval()
    f = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(f)
    assert loaded.config == model.config
    assert (loaded.head.weight is loaded.emb.weight) == tie
    ids = torch.randint(0, 40, (2, 6))
    assert torch.equal(loaded(ids), model(ids))
    other = RNNLM(RNNConfig(vocab_size=40, cell="gru", n_layer=2, d_emb=8, d_hidden=12))
    save_model(other, tmp_path / "gru.safetensors")
    from lmlab.models.io import load_weights

    with pytest.raises(LmlabError, match="do not"):
        load_weights(model, tmp_path / "gru.safetensors")


def test_training_parts_pick_the_objective_and_batches_per_model(tmp_path):
    from lmlab.data.windows import RandomWindows
    from lmlab.models import DecoderConfig, build_model, get_preset, load_model, save_model
    from lmlab.models.elmo import bilm_loss
    from lmlab.train.objectives import causal_lm_loss
    from lmlab.train.parts import training_parts

    tokens = np.arange(500) % 40
    kw = dict(block_size=8, batch_size=2, seed=0)
    objective, batches = training_parts(tiny(), tokens, **kw)
    assert isinstance(batches, TruncatedBPTT) and objective is batches.objective
    for preset, expect in (("nplm-tiny", causal_lm_loss), ("elmo-tiny", bilm_loss)):
        model = build_model(get_preset(preset, vocab_size=40))
        objective, batches = training_parts(model, tokens, **kw)
        assert objective is expect and isinstance(batches, RandomWindows)
    decoder = build_model(get_preset("gpt2-tiny", vocab_size=40, block_size=8, n_layer=1, d_model=16))
    assert isinstance(decoder.config, DecoderConfig)
    assert training_parts(decoder, tokens, **kw)[0] is causal_lm_loss
    assert type(load_model(save_model(decoder, tmp_path / "dec"))) is type(decoder)
    assert isinstance(load_model(save_model(tiny(), tmp_path / "rnn")), RNNLM)


def test_pretrain_and_eval_cli_train_recurrent_and_nplm_presets(cli, text_corpus, tmp_path):
    import json

    import lmlab

    data = tmp_path / "d"
    r = cli("data", "prepare", "--corpus", text_corpus, "--tokenizer", "char", "--out", data)
    assert r.returncode == 0, r.stderr
    for preset in ("lstm-tiny", "nplm-tiny"):
        run = tmp_path / preset
        r = cli("pretrain", "--model", preset, "--data", data, "--out", run, "--max-steps", "30",
                "--batch-size", "4", "--block-size", "32", "--lr", "3e-3", "--warmup-steps", "3",
                "--log-interval", "1")
        assert r.returncode == 0, r.stderr
        losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
                  if "loss" in json.loads(line)]
        assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
        r = cli("eval", "--ckpt", run, "--data", data, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["bits_per_byte"] > 0
        model, tok = lmlab.load(str(run))
        assert type(model).__name__ != "Decoder" and tok.vocab_size == model.config.vocab_size
