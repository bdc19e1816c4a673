"""LoRA: PEFT's own checks (non-zero B; equal logits before/after merge, after unmerge and after
save/load, different from the base; only LoRA learns; disable = base; idempotent merge), the
slices of fused layers, and the errors of bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lmlab
from lmlab.errors import LmlabError
from lmlab.models.registry import save_model
from lmlab.tuning import (
    TuningOptions,
    apply_tuning,
    disabled_tuning,
    load_tuning,
    merge_tuning,
    save_tuning,
    tuning_state_dict,
    unload_tuning,
    unmerge_tuning,
)
from tests.tuning.conftest import assert_only_method_learns, batch, perturb, tiny

ATOL = 1e-5


@pytest.mark.parametrize("kind,targets", [
    ("llama", ["q", "v"]), ("llama", ["qkv", "proj", "w1", "w3", "w2"]), ("gpt2", ["qkv", "fc"]),
    ("gpt2-untied", ["k", "mlp.proj", "lm_head"])])
def test_lora_equivalences(tmp_path, kind, targets):
    kind, _, untied = kind.partition("-")
    kw = {"tie_embeddings": False} if untied else {}
    model = tiny(kind, **kw)
    x = batch()
    with torch.no_grad():
        base = model(x)
    apply_tuning(model, TuningOptions(method="lora", r=4, alpha=8, targets=targets))
    perturb(model)  # B != 0
    with torch.no_grad():
        tuned = model(x)
        assert (tuned - base).abs().max() > 1e-2  # the adapter does something
        with disabled_tuning(model):
            assert torch.equal(model(x), base)  # disable = the base, exactly
        assert merge_tuning(model) > 0
        merged = model(x)
        assert merge_tuning(model) == 0  # idempotent, as PEFT
        assert torch.allclose(model(x), merged, atol=0, rtol=0)
        torch.testing.assert_close(merged, tuned, atol=ATOL, rtol=0)
        assert unmerge_tuning(model) > 0
        torch.testing.assert_close(model(x), tuned, atol=ATOL, rtol=0)
    save_model(tiny(kind, **kw), tmp_path / "base")
    save_tuning(model, tmp_path / "adapter", base=tmp_path / "base")
    fresh = tiny(kind, **kw)
    load_tuning(fresh, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), tuned, atol=ATOL, rtol=0)
    loaded, _ = lmlab.load(tmp_path / "adapter")  # base + adapter through the one loader
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), tuned, atol=ATOL, rtol=0)


def test_only_lora_learns_and_saves_alone(tmp_path):
    model = tiny()
    info = apply_tuning(model, TuningOptions(method="lora", r=2, targets=["q", "v", "w2"]))
    lora = {n for n, _ in model.named_parameters() if ".lora." in n}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == lora
    # q: (4*8=32 rows, 32 in), v: (2*8=16 rows), w2: (32 rows, 128 in): r*(in + out) each, per layer
    assert info.trainable == 2 * 2 * ((32 + 32) + (32 + 16) + (128 + 32)) == sum(
        p.numel() for n, p in model.named_parameters() if n in lora)
    assert info.total == sum(p.numel() for p in model.parameters())
    assert math.isclose(info.share, info.trainable / info.total)
    assert_only_method_learns(model, batch(T=16), lora)
    assert set(tuning_state_dict(model)) == lora


def test_keep_trainable_and_rslora():
    model = tiny()
    apply_tuning(model, TuningOptions(method="lora", r=4, alpha=8, rslora=True, targets=["v"]),
                 keep_trainable=("lm_head.",))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "lm_head.weight" in names and all(".lora." in n or n == "lm_head.weight" for n in names)
    assert model.blocks[0].attn.qkv.lora.scale == pytest.approx(8 / 2)  # alpha / sqrt(r)
    assert "lm_head.weight" in tuning_state_dict(model)


def test_slices_equal_separate_layers():
    """A LoRA on the q slice of the fused qkv equals a LoRA on a separate q projection."""
    model = tiny()
    apply_tuning(model, TuningOptions(method="lora", r=4, alpha=4, targets=["blocks.0.attn.q"]))
    perturb(model)
    attn = model.blocks[0].attn
    q_rows = attn.n_head * attn.head_dim
    lora = attn.qkv.lora
    x = torch.randn(3, 32)
    with torch.no_grad():
        out = attn.qkv(x)
        w = attn.qkv.weight
        expect_q = x @ w[:q_rows].T + (x @ lora.A["q"].T) @ lora.B["q"].T
        torch.testing.assert_close(out[:, :q_rows], expect_q, atol=ATOL, rtol=0)
        torch.testing.assert_close(out[:, q_rows:], x @ w[q_rows:].T, atol=ATOL, rtol=0)


def test_any_linear_and_dropout():
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(5, 8)
    base = net(x).detach()
    apply_tuning(net, TuningOptions(method="lora", r=2, dropout=0.5, targets=["0", "2"]))
    perturb(net)
    net.eval()
    a, b = net(x), net(x)
    assert torch.equal(a, b) and not torch.allclose(a, base)
    net.train()
    assert not torch.allclose(net(x), a)  # dropout on the LoRA input while training
    unload_tuning(net)  # merged and plain again
    assert not any(hasattr(m, "lora") for m in net.modules())
    net.eval()
    torch.testing.assert_close(net(x), a, atol=ATOL, rtol=0)


def test_unload_without_merge_restores_base():
    model = tiny()
    x = batch()
    with torch.no_grad():
        base = model(x)
    apply_tuning(model, TuningOptions(method="lora", r=2, targets=["q"]))
    perturb(model)
    unload_tuning(model, merge=False)
    with torch.no_grad():
        assert torch.equal(model(x), base)
    assert all(p.requires_grad for p in model.parameters())


def test_target_matching_nothing_lists_names():
    with pytest.raises(LmlabError, match=r"'q_proj' matches no linear layer.*blocks\.N\.attn\.q.*mlp\.w13"):
        apply_tuning(tiny(), TuningOptions(method="lora", targets=["q_proj"]))


def test_rank_too_large():
    with pytest.raises(LmlabError, match=r"r=40 is larger than blocks\.0\.attn\.v allows .*at most r=16"):
        apply_tuning(tiny(), TuningOptions(method="lora", r=40, targets=["v"]))


def test_whole_and_slice_refused():
    with pytest.raises(LmlabError, match="both whole and by its slices"):
        apply_tuning(tiny(), TuningOptions(method="lora", targets=["qkv", "q"]))


def test_apply_twice_refused():
    model = tiny()
    apply_tuning(model, TuningOptions(method="lora", targets=["q"]))
    with pytest.raises(LmlabError, match="already has lora tuning"):
        apply_tuning(model, TuningOptions(method="lora", targets=["v"]))


def test_merge_into_quantised_or_inference_base_refused():
    net = nn.Sequential(nn.Linear(8, 8))
    apply_tuning(net, TuningOptions(method="lora", r=2, targets=["0"]))
    net[0].weight.data = net[0].weight.data.to(torch.int8)
    with pytest.raises(LmlabError, match="int8 weights \\(a quantised base\\)"):
        merge_tuning(net)
    with torch.inference_mode():
        frozen = tiny()
    apply_tuning(frozen, TuningOptions(method="lora", r=2, targets=["q"]))
    with pytest.raises(LmlabError, match="inference-mode tensors"):
        merge_tuning(frozen)


def test_merge_into_tied_head_refused():
    model = tiny("gpt2")  # lm_head shares the token embedding
    apply_tuning(model, TuningOptions(method="lora", r=2, targets=["lm_head"]))
    with pytest.raises(LmlabError, match=r"lm_head\.weight is tied to tok_emb\.weight"):
        merge_tuning(model)


def test_disable_merged_refused():
    model = tiny()
    apply_tuning(model, TuningOptions(method="lora", r=2, targets=["q"]))
    merge_tuning(model)
    with pytest.raises(LmlabError, match="unmerge_tuning"), disabled_tuning(model):
        pass


def test_adapter_onto_wrong_base(tmp_path):
    model = tiny()
    apply_tuning(model, TuningOptions(method="lora", r=2, targets=["q", "v"]))
    perturb(model)
    save_tuning(model, tmp_path / "a")
    with pytest.raises(LmlabError, match=r"fingerprint differs"):
        load_tuning(tiny(seed=5), tmp_path / "a")  # same shapes, other weights
    with pytest.raises(LmlabError, match=r"attn\.qkv\.lora\.B\.q has shape \(32, 2\) there and \(64, 2\)"):
        load_tuning(tiny(n_head=8, head_dim=8, d_model=32), tmp_path / "a")
    other = tiny(seed=5)
    with pytest.raises(LmlabError):
        load_tuning(other, tmp_path / "a")
    assert not hasattr(other, "lmlab_tuning")  # a failed load leaves the base untouched
    assert not any(hasattr(m, "lora") for m in other.modules())
    with pytest.raises(LmlabError, match="does not say which base"):
        lmlab.load(tmp_path / "a")


def test_bad_options():
    with pytest.raises(LmlabError, match="not one of lora"):
        TuningOptions(method="ia3")
    with pytest.raises(LmlabError, match="r must be a positive"):
        TuningOptions(r=0)
