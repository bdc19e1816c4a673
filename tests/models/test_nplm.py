"""Tests of the Bengio et al. NPLM: causality, network shape, training through the real Trainer, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlab.data.windows import RandomWindows
from lmlab.errors import LmlabError
from lmlab.models import build_model, get_preset, load_model, save_model
from lmlab.models.nplm import NPLM, NPLMConfig
from lmlab.train.log import read_metrics
from lmlab.train.loop import Trainer, TrainSettings
from lmlab.train.objectives import causal_lm_loss
from lmlab.train.options import OptimOptions

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def unigram_entropy(tokens: np.ndarray) -> float:
    """Entropy in nats of the token frequencies: the loss of the best context-free model."""
    counts = np.bincount(np.asarray(tokens)).astype(float)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_position_t_sees_only_its_context_window():
    torch.manual_seed(0)
    model = NPLM(NPLMConfig(vocab_size=50, context=3, d_emb=8, d_hidden=16, direct=True)).eval()
    with torch.no_grad():
        model.direct.weight.normal_()  # non-zero, so the direct path is exercised too
    ids = torch.randint(0, 50, (2, 12))
    base = model(ids)
    assert base.shape == (2, 12, 50)
    t = 6
    future = ids.clone()
    future[:, t + 1:] = (future[:, t + 1:] + 7) % 50
    out = model(future)
    assert torch.equal(out[:, : t + 1], base[:, : t + 1])  # nothing after t leaks into positions <= t
    assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])
    old = ids.clone()
    old[:, t - 3] = (old[:, t - 3] + 1) % 50  # just outside position t's window of 3 tokens
    assert torch.equal(model(old)[:, t], base[:, t])
    inside = ids.clone()
    inside[:, t - 2] = (inside[:, t - 2] + 1) % 50  # the oldest token of the window
    assert not torch.allclose(model(inside)[:, t], base[:, t])


def test_start_of_sequence_reads_padding_and_matches_a_longer_prefix():
    torch.manual_seed(0)
    model = NPLM(NPLMConfig(vocab_size=30, context=4, d_emb=6, d_hidden=10)).eval()
    ids = torch.randint(0, 30, (1, 9))
    # Position t only depends on the last 4 tokens, so a suffix scores like the full sequence there.
    assert torch.allclose(model(ids)[:, 8], model(ids[:, 5:])[:, 3])
    x = model.features(ids[:, :2])
    pad = model.emb.weight[30]
    assert torch.equal(x[0, 0, :6], pad) and torch.equal(x[0, 0, 12:18], pad)  # oldest slots padded
    assert torch.equal(x[0, 1, 18:], model.emb.weight[ids[0, 1]])  # newest slot is token t itself


def test_parameter_count_follows_the_paper():
    V, n, m, h = 40, 3, 5, 7
    plain = NPLM(NPLMConfig(vocab_size=V, context=n, d_emb=m, d_hidden=h))
    direct = NPLM(NPLMConfig(vocab_size=V, context=n, d_emb=m, d_hidden=h, direct=True))
    # C (plus the padding row), H and d, U and b, and W for the direct connections.
    assert plain.num_params() == (V + 1) * m + (n * m * h + h) + (h * V + V)
    assert direct.num_params() == plain.num_params() + n * m * V
    assert plain.num_params(non_embedding=True) == plain.num_params() - (V + 1) * m
    assert plain.flops_per_token(16) == 6.0 * plain.num_params(non_embedding=True)


def test_nplm_training_loss_falls_through_the_trainer(char_data, tmp_path):
    torch.manual_seed(0)
    model = build_model(get_preset("nplm-tiny", vocab_size=char_data.vocab_size))
    batches = RandomWindows(char_data.train, block_size=32, batch_size=8, seed=0)
    settings = TrainSettings(optim=OptimOptions(lr=2e-2, min_lr=2e-3, warmup_steps=5, weight_decay=0.0),
                             max_steps=60, precision="fp32", show_progress=False, log_interval=1)
    Trainer(model, causal_lm_loss, batches, settings, out_dir=tmp_path, device=torch.device("cpu")).fit()
    losses = [r["loss"] for r in read_metrics(tmp_path)]
    assert losses[0] > np.log(char_data.vocab_size) - 0.5  # starts near uniform
    # A model that ignored its context could not go below the unigram entropy.
    assert np.mean(losses[-5:]) < unigram_entropy(char_data.train) - 1.0


def test_save_load_round_trip_and_load_any(tmp_path):
    torch.manual_seed(0)
    model = build_model(get_preset("nplm-tiny", vocab_size=60)).eval()
    path = save_model(model, tmp_path)
    assert path == tmp_path / "model.safetensors"
    loaded = load_model(tmp_path)
    assert isinstance(loaded, NPLM) and loaded.config == model.config
    ids = torch.randint(0, 60, (2, 10))
    assert torch.equal(loaded(ids), model(ids))
    assert isinstance(load_model(path), NPLM)


def test_one_loader_loads_decoders_too(tmp_path):
    from lmlab.models import Decoder, build_model, get_preset, save_model

    dec = build_model(get_preset("gpt2-tiny", vocab_size=32, block_size=8, n_layer=1, d_model=16))
    save_model(dec, tmp_path)
    assert isinstance(load_model(tmp_path), Decoder)


def test_bad_inputs(tmp_path):
    with pytest.raises(LmlabError, match="unknown model preset 'nplm-huge'"):
        get_preset("nplm-huge")
    with pytest.raises(LmlabError, match="context must be a positive integer"):
        NPLMConfig(context=0)
    with pytest.raises(LmlabError, match="unknown model config keys order"):
        get_preset("nplm-tiny", order=3)
    model = NPLM(NPLMConfig(vocab_size=10, context=2, d_emb=4, d_hidden=4))
    with pytest.raises(LmlabError, match=r"shape \(batch, time\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(LmlabError, match="no model at"):
        load_model(tmp_path / "missing")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LmlabError, match="damaged"):
        load_model(tmp_path / "bad.safetensors")
