"""Houlsby and Pfeiffer adapters: near-identity at init, disable = base exactly, save/load and
lmlab.load equal, only adapter parameters learn, where they sit, and the families without blocks."""

from __future__ import annotations

import pytest
import torch

import lmlab
from lmlab.errors import LmlabError
from lmlab.models.registry import build_model, get_preset, save_model
from lmlab.tuning import (
    TuningOptions,
    apply_tuning,
    disabled_tuning,
    load_tuning,
    merge_tuning,
    save_tuning,
    tuning_state_dict,
)
from tests.tuning.conftest import assert_only_method_learns, batch, perturb, tiny

ATOL = 1e-5


@pytest.mark.parametrize("method", ["houlsby", "pfeiffer"])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_adapter_identity_and_save_load(tmp_path, method, kind):
    model = tiny(kind)
    x = batch()
    with torch.no_grad():
        base = model(x)
    info = apply_tuning(model, TuningOptions(method=method, bottleneck=4))
    sublayers = 2 if method == "houlsby" else 1
    assert info.trainable == 2 * sublayers * (2 * 32 * 4 + 4 + 32)  # layers x sublayers x (down + up)
    with torch.no_grad():
        assert (model(x) - base).abs().max() < 1e-3  # near-identity at init
    perturb(model)
    with torch.no_grad():
        tuned = model(x)
        assert (tuned - base).abs().max() > 1e-2
        with disabled_tuning(model):
            assert torch.equal(model(x), base)
        assert torch.equal(model(x), tuned)  # enabled again after the block
    save_model(tiny(kind), tmp_path / "base")
    save_tuning(model, tmp_path / "adapter", base=tmp_path / "base")
    fresh = tiny(kind)
    load_tuning(fresh, tmp_path / "adapter")
    loaded, _ = lmlab.load(tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), tuned, atol=ATOL, rtol=0)
        torch.testing.assert_close(loaded(x), tuned, atol=ATOL, rtol=0)


def test_only_adapters_learn():
    model = tiny()
    apply_tuning(model, TuningOptions(method="houlsby", bottleneck=4))
    names = {n for n, _ in model.named_parameters() if ".adapter." in n}
    sites = {f"blocks.{i}.{s}" for i in range(2) for s in ("attn", "mlp")}
    assert {n.rsplit(".", 3)[0] for n in names} == sites
    assert_only_method_learns(model, batch(T=16), names)
    assert set(tuning_state_dict(model)) == names


def test_houlsby_sits_before_the_residual_add():
    """The adapter transforms the sublayer's output h into h + up(act(down(h))), before the add."""
    model = tiny("gpt2")
    apply_tuning(model, TuningOptions(method="pfeiffer", bottleneck=4))
    perturb(model)
    block = model.blocks[0]
    h = torch.randn(1, 5, 32)
    with torch.no_grad():
        inner = block.mlp.fc, block.mlp.proj
        expected_mlp = inner[1](torch.nn.functional.gelu(inner[0](block.norm2(h)), approximate="tanh"))
        ad = block.mlp.adapter
        expected_mlp = expected_mlp + ad.up(torch.relu(ad.down(expected_mlp)))
        torch.testing.assert_close(block.mlp(block.norm2(h)), expected_mlp, atol=ATOL, rtol=0)


def test_adapters_on_encoder_and_encdec():
    enc = build_model(get_preset("bert-micro", vocab_size=50, block_size=16)).eval()
    x = batch(vocab=50)
    with torch.no_grad():
        base = enc(x)
    apply_tuning(enc, TuningOptions(method="houlsby", bottleneck=4))
    perturb(enc)
    with torch.no_grad():
        assert (enc(x) - base).abs().max() > 1e-3
        with disabled_tuning(enc):
            assert torch.equal(enc(x), base)
    t5 = build_model(get_preset("t5-tiny", vocab_size=50)).eval()
    info = apply_tuning(t5, TuningOptions(method="houlsby", bottleneck=4))
    # encoder blocks: attn + mlp; decoder blocks: attn + cross_attn + mlp
    n = t5.config.n_layer
    assert len(info.modules) == 2 * n + 3 * n


def test_adapters_cannot_merge_and_need_blocks():
    model = tiny()
    apply_tuning(model, TuningOptions(method="houlsby"))
    with pytest.raises(LmlabError, match="cannot be merged"):
        merge_tuning(model)
    lstm = build_model(get_preset("lstm-tiny", vocab_size=50))
    with pytest.raises(LmlabError, match=r"RNNLM has no Transformer blocks \(families with them: decoder"):
        apply_tuning(lstm, TuningOptions(method="pfeiffer"))
