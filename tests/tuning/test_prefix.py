"""Prefix tuning and prompt tuning: the attention with a prefix against a hand computation, the
KV cache and padding with a prefix, folding the MLP, disable = base, save/load, only the method
learns; prompt tuning equal to really prepending tokens, with and without a cache."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lmlab
from lmlab.errors import LmlabError
from lmlab.models.registry import build_model, get_preset, save_model
from lmlab.nn.attention import Attention
from lmlab.tuning import (
    TuningOptions,
    apply_tuning,
    disabled_tuning,
    load_tuning,
    merge_tuning,
    save_tuning,
    tuning_state_dict,
    unmerge_tuning,
)
from tests.tuning.conftest import assert_only_method_learns, batch, perturb, tiny

ATOL = 1e-5
PREFIX = TuningOptions(method="prefix", n_prefix=3, prefix_hidden=16)


def test_attention_with_prefix_by_hand():
    torch.manual_seed(0)
    attn = Attention(16, 4, 2, 4).eval()
    pk, pv = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    attn.prefix = lambda B: (pk, pv)
    x = torch.randn(2, 5, 16)
    q, k, v = attn.qkv(x).view(2, 5, 8, 4).transpose(1, 2).split([4, 2, 2], dim=1)
    k = torch.cat([pk.expand(2, -1, -1, -1), k], 2).repeat_interleave(2, dim=1)
    v = torch.cat([pv.expand(2, -1, -1, -1), v], 2).repeat_interleave(2, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(4)
    allowed = torch.cat([torch.ones(5, 3, dtype=torch.bool), torch.ones(5, 5, dtype=torch.bool).tril()], 1)
    y = F.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v
    expected = attn.proj(y.transpose(1, 2).reshape(2, 5, 16))
    with torch.no_grad():
        torch.testing.assert_close(attn(x, is_causal=True), expected, atol=ATOL, rtol=0)
        no_causal = F.softmax(scores, -1) @ v  # bidirectional: every key, prefix included
        torch.testing.assert_close(attn(x), attn.proj(no_causal.transpose(1, 2).reshape(2, 5, 16)), atol=ATOL,
                                   rtol=0)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_prefix_fold_disable_save_load(tmp_path, kind):
    model = tiny(kind)
    x = batch()
    with torch.no_grad():
        base = model(x)
    info = apply_tuning(model, PREFIX)
    kv_width = 2 * model.config.n_kv_heads * model.config.head_dim
    assert info.trainable == 3 * 32 + (32 * 16 + 16) + (16 * 2 * kv_width + 2 * kv_width)
    perturb(model)
    with torch.no_grad():
        tuned = model(x)
        assert (tuned - base).abs().max() > 1e-2
        with disabled_tuning(model):
            assert torch.equal(model(x), base)
    save_model(tiny(kind), tmp_path / "base")
    save_tuning(model, tmp_path / "mlp", base=tmp_path / "base")  # reparameterised: the MLP is saved
    assert merge_tuning(model) == 2  # fold the MLP into plain prefixes
    assert merge_tuning(model) == 0
    assert not hasattr(model, "prefix_encoder")
    with torch.no_grad():
        torch.testing.assert_close(model(x), tuned, atol=ATOL, rtol=0)
    with pytest.raises(LmlabError, match="folded"):
        unmerge_tuning(model)
    save_tuning(model, tmp_path / "folded", base=tmp_path / "base")
    assert all(".prefix." in k for k in tuning_state_dict(model))
    for folder in ("mlp", "folded"):
        fresh = tiny(kind)
        load_tuning(fresh, tmp_path / folder)
        loaded, _ = lmlab.load(tmp_path / folder)
        with torch.no_grad():
            torch.testing.assert_close(fresh(x), tuned, atol=ATOL, rtol=0)
            torch.testing.assert_close(loaded(x), tuned, atol=ATOL, rtol=0)


def test_only_prefix_learns_before_and_after_folding():
    model = tiny()
    apply_tuning(model, PREFIX)
    mlp = {n for n, _ in model.named_parameters() if n.startswith("prefix_encoder.")}
    assert mlp == {f"prefix_encoder.{n}" for n in ("embedding.weight", "hidden.weight", "hidden.bias",
                                                   "out.weight", "out.bias")}
    assert_only_method_learns(model, batch(T=16), mlp)
    merge_tuning(model)
    plain = {f"blocks.{i}.attn.prefix.{t}" for i in range(2) for t in "kv"}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == plain
    assert_only_method_learns(model, batch(T=16), plain)


def test_prefix_without_mlp_and_with_cache_and_padding():
    model = tiny()
    apply_tuning(model, TuningOptions(method="prefix", n_prefix=4, prefix_hidden=0))
    x = batch(B=2, T=10)
    with torch.no_grad():
        full = model(x)
        cache = model.new_kv_cache(2, 16)
        first = model(x[:, :6], kv_cache=cache)
        steps = [model(x[:, t:t + 1], kv_cache=cache) for t in range(6, 10)]
        torch.testing.assert_close(torch.cat([first, *steps], 1), full, atol=ATOL, rtol=0)
        # right padding: the real tokens of a padded row see what they see alone
        mask = torch.ones(2, 10, dtype=torch.long)
        mask[1, 7:] = 0
        padded = model(x, attention_mask=mask)
        torch.testing.assert_close(padded[1, :7], model(x[1:, :7])[0], atol=ATOL, rtol=0)


def test_prefix_on_encoder_and_refused_for_mla():
    enc = build_model(get_preset("bert-micro", vocab_size=50, block_size=16)).eval()
    x = batch(vocab=50)
    mask = torch.ones_like(x)
    mask[0, 8:] = 0
    with torch.no_grad():
        base = enc(x, attention_mask=mask)
    apply_tuning(enc, PREFIX)
    with torch.no_grad():
        assert (enc(x, attention_mask=mask) - base).abs().max() > 1e-3
    mla = tiny(attn="mla", n_kv_heads=None)
    with pytest.raises(LmlabError, match="MultiHeadLatentAttention .*use LoRA or adapters"):
        apply_tuning(mla, PREFIX)


PROMPT = TuningOptions(method="prompt", n_prompt=3)


def test_prompt_equals_prepended_tokens():
    """With the soft prompt set to the embeddings of real tokens p, the tuned model on x is the base
    on p + x, cut to x's positions."""
    model = tiny()
    x = batch()
    p = torch.tensor([[5, 9, 11]])
    with torch.no_grad():
        base = model(torch.cat([p.expand(2, -1), x], 1))[:, 3:]
        plain = model(x)
    apply_tuning(model, PROMPT)
    with torch.no_grad():
        model.tok_emb.prompt.weight.copy_(model.tok_emb.weight[p[0]])
        out = model(x)
        assert out.shape == plain.shape
        torch.testing.assert_close(out, base, atol=ATOL, rtol=0)
        with disabled_tuning(model):
            assert torch.equal(model(x), plain)
        loss = model(x[:, :-1], targets=x[:, 1:])
        expect = F.cross_entropy(base[:, :-1].reshape(-1, 61), x[:, 1:].reshape(-1))
        torch.testing.assert_close(loss, expect, atol=ATOL, rtol=0)


def test_prompt_cache_save_load_and_learning(tmp_path):
    model = tiny()
    apply_tuning(model, PROMPT)
    perturb(model)
    x = batch(T=10)
    with torch.no_grad():
        full = model(x)
        cache = model.new_kv_cache(2, 10)  # room for the virtual tokens is added
        first = model(x[:, :6], kv_cache=cache)
        steps = [model(x[:, t:t + 1], kv_cache=cache) for t in range(6, 10)]
        torch.testing.assert_close(torch.cat([first, *steps], 1), full, atol=ATOL, rtol=0)
    save_model(tiny(), tmp_path / "base")
    save_tuning(model, tmp_path / "prompt", base=tmp_path / "base")
    assert set(tuning_state_dict(model)) == {"tok_emb.prompt.weight"}
    loaded, _ = lmlab.load(tmp_path / "prompt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), full, atol=ATOL, rtol=0)
    assert_only_method_learns(model, batch(T=16), {"tok_emb.prompt.weight"})
    with pytest.raises(LmlabError, match="cannot be merged"):
        merge_tuning(model)


def test_prompt_on_encoder_and_refused_for_rnn():
    enc = build_model(get_preset("bert-micro", vocab_size=50, block_size=16)).eval()
    x = batch(vocab=50)
    with torch.no_grad():
        base = enc.hidden_states(x)
    apply_tuning(enc, PROMPT)
    perturb(enc)
    with torch.no_grad():
        h = enc.hidden_states(x, attention_mask=torch.ones_like(x))
        assert h.shape == base.shape and (h - base).abs().max() > 1e-3
        assert enc(x).shape == (2, 12, 50)
    with pytest.raises(LmlabError, match="RNNLM has no token embedding"):
        apply_tuning(build_model(get_preset("lstm-tiny", vocab_size=50)), PROMPT)


class _Classifier(torch.nn.Module):
    """A task model as helper adapt builds them: ``.backbone`` (an lmlab LM) and ``.head``."""

    def __init__(self):
        super().__init__()
        self.backbone = tiny()
        self.head = torch.nn.Linear(61, 2)

    def forward(self, x):
        return self.head(self.backbone(x)[:, -1])


@pytest.mark.parametrize("method", ["prefix", "prompt", "houlsby"])
def test_methods_go_into_the_backbone_and_keep_the_head(tmp_path, method):
    clf = _Classifier().eval()
    opts = TuningOptions(method=method, n_prefix=2, prefix_hidden=8, n_prompt=2, bottleneck=4)
    info = apply_tuning(clf, opts, keep_trainable=("head.",))
    names = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} < names and all(n.startswith(("head.", "backbone.")) for n in names)
    assert info.trainable == sum(p.numel() for n, p in clf.named_parameters() if n in names)
    perturb(clf)
    x = batch()
    with torch.no_grad():
        out = clf(x)
    save_tuning(clf, tmp_path / "a")
    fresh = _Classifier().eval()
    load_tuning(fresh, tmp_path / "a")  # the head comes from the adapter file
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), out, atol=ATOL, rtol=0)
