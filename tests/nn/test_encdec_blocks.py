"""The pieces encoders and encoder-decoders are built from: cross-attention and its cache,
padding masks, float (bias) masks, T5's relative position bias and post-norm blocks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmlab.nn import (
    Attention,
    BlockSpec,
    CrossKVCache,
    KVCache,
    RelativePositionBias,
    TransformerBlock,
    padding_mask,
)


def _reference_attention(q, k, v, mask=None, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = q @ k.transpose(-1, -2) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return F.softmax(scores, dim=-1) @ v


def test_cross_attention_matches_the_formula_and_reuses_its_cache():
    torch.manual_seed(0)
    att = Attention(16, 4, 2, 4, bias=True, cross=True, d_memory=12).eval()
    x, mem = torch.randn(2, 3, 16), torch.randn(2, 5, 12)
    keep = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    mask = padding_mask(keep)
    q = att.q(x).view(2, 3, 4, 4).transpose(1, 2)
    k, v = att.kv(mem).view(2, 5, 4, 4).transpose(1, 2).split([2, 2], dim=1)
    k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    ref = att.proj(_reference_attention(q, k, v, mask).transpose(1, 2).reshape(2, 3, 16))
    torch.testing.assert_close(att(x, mask=mask, memory=mem), ref)
    cache = CrossKVCache(1)
    first = att(x[:, :1], cache=cache, mask=mask, memory=mem)
    later = att(x[:, 1:], cache=cache, mask=mask)  # no memory: the cached keys/values are used
    torch.testing.assert_close(torch.cat([first, later], dim=1), ref)
    cache.reorder(torch.tensor([1, 1]))
    torch.testing.assert_close(att(x[[1, 1], 1:], cache=cache, mask=mask[[1, 1]])[0], later[1])


def test_float_bias_masks_and_scale_reach_every_query_path():
    torch.manual_seed(0)
    att = Attention(16, 4, 4, 4, scale=1.0).eval()
    x = torch.randn(1, 6, 16)
    bias = torch.randn(1, 4, 6, 6)
    q, k, v = att.qkv(x).view(1, 6, 12, 4).transpose(1, 2).split([4, 4, 4], dim=1)
    ref = att.proj(_reference_attention(q, k, v, bias, scale=1.0).transpose(1, 2).reshape(1, 6, 16))
    torch.testing.assert_close(att(x, mask=bias), ref)
    cache = KVCache(1, 1, 4, 6, 4)
    att(x[:, :5], cache=cache, mask=bias[:, :, :5, :5])
    cache.length = 5
    last = att(x[:, 5:], cache=cache, mask=bias[:, :, 5:, :])  # one query: the per-head bias is regrouped
    torch.testing.assert_close(last, ref[:, 5:], atol=1e-5, rtol=1e-5)


def test_kv_cache_reorder_keeps_selected_rows():
    cache = KVCache(2, 3, 1, 4, 2)
    cache.k.copy_(torch.arange(3.0).view(1, 3, 1, 1, 1).expand_as(cache.k))
    k_view = cache._layers[1][0]
    cache.reorder(torch.tensor([2, 2, 0]))
    assert k_view[:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0]


def _t5_bucket(relative_position, bidirectional, num_buckets, max_distance):
    transformers = pytest.importorskip("transformers")
    from transformers.models.t5.modeling_t5 import T5Attention

    del transformers
    return T5Attention._relative_position_bucket(relative_position, bidirectional, num_buckets, max_distance)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_buckets_equal_hugging_face_t5(bidirectional):
    rel = torch.arange(-300, 300)[None, :]
    bias = RelativePositionBias(3, num_buckets=32, max_distance=128, bidirectional=bidirectional)
    from lmlab.nn.positions import relative_position_bucket

    ours = relative_position_bucket(rel, bidirectional, 32, 128)
    assert torch.equal(ours, _t5_bucket(rel, bidirectional, 32, 128))
    out = bias(4, 7, start=3)
    assert out.shape == (1, 3, 4, 7)
    key, query = torch.arange(7)[None, :], torch.arange(3, 7)[:, None]
    buckets = relative_position_bucket(key - query, bidirectional, 32, 128)
    torch.testing.assert_close(out[0, 1], bias.weight[buckets, 1])


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_bias_table_lookup_equals_direct_bucketing(bidirectional):
    from lmlab.nn.positions import relative_position_bucket

    bias = RelativePositionBias(2, num_buckets=8, max_distance=20, bidirectional=bidirectional)
    # decoding steps (one query), a chunk after a cache, a square, and lengths that grow the table
    cases = [(1, 1, 0), (1, 9, 8), (3, 12, 9), (5, 5, 0), (1, 200, 199), (150, 300, 150)]
    for n_query, n_key, start in cases:
        key = torch.arange(n_key)[None, :]
        query = torch.arange(start, start + n_query)[:, None]
        ref = bias.weight[relative_position_bucket(key - query, bidirectional, 8, 20)].permute(2, 0, 1)
        assert torch.equal(bias(n_query, n_key, start), ref[None])


def test_post_norm_block_normalises_after_each_residual():
    torch.manual_seed(0)
    spec = BlockSpec(16, 4, 4, 4, 32, act="gelu", post_norm=True, cross=True)
    block = TransformerBlock(spec).eval()
    x, mem = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    h = block.norm1(x + block.attn(x, is_causal=True))
    h = block.norm_cross(h + block.cross_attn(h, memory=mem))
    ref = block.norm2(h + block.mlp(h))
    torch.testing.assert_close(block(x, is_causal=True, memory=mem), ref)
    pre = TransformerBlock(BlockSpec(16, 4, 4, 4, 32, norm="rmsnorm", act="gelu_tanh", gated=True)).eval()
    h = x + pre.attn(pre.norm1(x))
    torch.testing.assert_close(pre(x), h + pre.mlp(pre.norm2(h)))
