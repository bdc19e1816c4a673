"""Building blocks: norms, MLPs, positions (RoPE vs Hugging Face), attention and its KV cache."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmlab.errors import LmlabError
from lmlab.nn import (
    MLP,
    Attention,
    GatedMLP,
    KVCache,
    LayerNorm,
    RMSNorm,
    RotaryEmbedding,
    SinusoidalPositions,
    apply_rope,
    causal_mask,
    swiglu_hidden,
)
from lmlab.nn.positions import rope_inv_freq


def test_rmsnorm_matches_formula_in_fp32_and_bf16():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, 16) * 3
    ref = norm.weight * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    torch.testing.assert_close(norm(x), ref, atol=1e-5, rtol=1e-5)
    xb = x.bfloat16()
    # HF LlamaRMSNorm: statistic in fp32, cast back, then the gain
    xf = xb.float()
    ref_b = norm.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16()
    out_b = norm(xb)
    assert out_b.dtype == ref_b.dtype
    torch.testing.assert_close(out_b, ref_b)


@pytest.mark.parametrize("shape", [(1, 1, 256), (1, 1, 128), (2, 7, 704), (3, 1000)])
def test_rmsnorm_without_grad_gives_f_rms_norm_bit_for_bit(shape):
    # The no-grad (decoding) path runs F.rms_norm's ops itself; it must give the same bits.
    torch.manual_seed(0)
    norm = RMSNorm(shape[-1], eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(shape) * 3
    ref = F.rms_norm(x, norm.weight.shape, norm.weight, norm.eps)
    with torch.inference_mode():
        assert torch.equal(norm(x), ref)
    with torch.no_grad():
        assert torch.equal(norm(x), ref)
    assert torch.equal(norm(x), ref)  # the grad path is F.rms_norm itself


def test_layernorm_with_and_without_bias():
    x = torch.randn(4, 8)
    ln = LayerNorm(8, bias=False)
    assert ln.bias is None
    torch.testing.assert_close(ln(x), F.layer_norm(x, (8,)))
    lnb = LayerNorm(8, bias=True)
    with torch.no_grad():
        lnb.bias.fill_(0.5)
    torch.testing.assert_close(lnb(x), F.layer_norm(x, (8,)) + 0.5)


def test_swiglu_fused_equals_separate_projections():
    torch.manual_seed(0)
    mlp = GatedMLP(12, 20)
    w1, w3 = mlp.w13.weight[:20], mlp.w13.weight[20:]
    x = torch.randn(2, 3, 12)
    ref = mlp.w2(F.silu(x @ w1.T) * (x @ w3.T))
    torch.testing.assert_close(mlp(x), ref)
    assert swiglu_hidden(4096, 256) == 11008  # Llama-2 7B
    assert swiglu_hidden(64, 64) == 192


def test_gelu_mlp_uses_tanh_approximation():
    torch.manual_seed(0)
    mlp = MLP(8, 32)
    x = torch.randn(5, 8)
    h = mlp.fc(x)
    gelu_new = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    torch.testing.assert_close(mlp(x), mlp.proj(gelu_new))


def test_sinusoidal_table_values():
    pe = SinusoidalPositions(50, 8).table
    p, i = 7, 1
    assert pe[p, 2 * i].item() == pytest.approx(math.sin(p / 10000 ** (2 * i / 8)), abs=1e-6)
    assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(p / 10000 ** (2 * i / 8)), abs=1e-6)


@pytest.mark.parametrize("scaling", [None, {"rope_type": "linear", "factor": 4.0},
                                     {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32}])
def test_rope_matches_hugging_face(scaling):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    hd, theta = 32, 500000.0
    params = {"rope_type": "default", "rope_theta": theta, **(scaling or {})}
    cfg = LlamaConfig(hidden_size=hd * 2, num_attention_heads=2, max_position_embeddings=128,
                      rope_parameters=params)
    hf_rope = LlamaRotaryEmbedding(cfg)
    torch.testing.assert_close(rope_inv_freq(hd, theta, scaling), hf_rope.inv_freq, rtol=0, atol=0)
    ours = RotaryEmbedding(hd, 128, theta, scaling)
    pos = torch.arange(10, 30)[None]
    x = torch.randn(1, 20, 3, hd)  # (B, T, H, D)
    cos, sin = hf_rope(x, pos)
    ref, _ = apply_rotary_pos_emb(x.transpose(1, 2), x.transpose(1, 2), cos, sin)
    got = apply_rope(x, *ours(10, 20)).transpose(1, 2)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    got_pos = apply_rope(x, *ours(0, 20, positions=pos)).transpose(1, 2)  # gathered positions
    torch.testing.assert_close(got_pos, ref, atol=1e-6, rtol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(16, 64)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m: int, n: int) -> float:
        return (apply_rope(q, *rope(m, 1)) * apply_rope(k, *rope(n, 1))).sum().item()

    assert score(5, 2) == pytest.approx(score(40, 37), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)


def test_rope_rejects_unknown_scaling():
    with pytest.raises(LmlabError, match="yarn"):
        RotaryEmbedding(16, 64, scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(LmlabError, match="low_freq_factor"):
        RotaryEmbedding(16, 64, scaling={"rope_type": "llama3", "factor": 2.0})


def test_causal_mask_is_lower_right_aligned():
    m = causal_mask(2, 5)
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert torch.equal(causal_mask(4, 4), torch.ones(4, 4, dtype=torch.bool).tril())


def test_gqa_equals_mha_with_repeated_kv_heads():
    torch.manual_seed(0)
    nh, nkv, hd, d = 4, 2, 8, 32
    gqa = Attention(d, nh, nkv, hd, bias=True)
    mha = Attention(d, nh, nh, hd, bias=True)
    with torch.no_grad():
        q, k, v = gqa.qkv.weight.split([nh * hd, nkv * hd, nkv * hd])
        qb, kb, vb = gqa.qkv.bias.split([nh * hd, nkv * hd, nkv * hd])

        def rep(t: torch.Tensor) -> torch.Tensor:  # repeat each KV head for its query heads
            rest = t.shape[1:]
            return t.view(nkv, hd, *rest).repeat_interleave(nh // nkv, 0).reshape(nh * hd, *rest)

        mha.qkv.weight.copy_(torch.cat([q, rep(k), rep(v)]))
        mha.qkv.bias.copy_(torch.cat([qb, rep(kb), rep(vb)]))
        mha.proj.load_state_dict(gqa.proj.state_dict())
    rope = RotaryEmbedding(hd, 32)
    x = torch.randn(2, 9, d)
    torch.testing.assert_close(gqa(x, rope(0, 9), is_causal=True), mha(x, rope(0, 9), is_causal=True))


@pytest.mark.parametrize("n_kv", [4, 2, 1])  # MHA, GQA, MQA
def test_kv_cache_chunked_prefill_and_decode_equal_full_pass(n_kv):
    torch.manual_seed(0)
    nh, hd, d, T = 4, 8, 32, 12
    attn = Attention(d, nh, n_kv, hd).eval()
    rope = RotaryEmbedding(hd, 64)
    x = torch.randn(2, T, d)
    full = attn(x, rope(0, T), is_causal=True)
    cache = KVCache(1, 2, n_kv, 32, hd)
    outs = []
    for a, b in ((0, 5), (5, 8), (8, 9), (9, 10), (10, 12)):
        n = b - a
        mask = causal_mask(n, b) if a > 0 and n > 1 else None
        outs.append(attn(x[:, a:b], rope(a, n), cache, 0, mask, is_causal=a == 0))
        cache.length = b
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-6, rtol=1e-5)


def test_top_left_causal_flag_with_cache_would_be_wrong():
    """The pitfall the lower-right mask avoids: SDPA's is_causal with 2 queries vs 6 keys."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 1, 2, 8), torch.randn(1, 1, 6, 8), torch.randn(1, 1, 6, 8)
    right = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(2, 6))
    wrong = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert not torch.allclose(right, wrong, atol=1e-3)
