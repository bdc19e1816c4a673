"""Attention probabilities recorded beside SDPA: they weigh the values exactly as SDPA does."""

import torch

from lmlab.models.registry import build_model, get_preset
from lmlab.nn.attention import Attention, attention_probs, causal_mask, record_attention


def test_recorded_probabilities_reproduce_sdpa_output_with_gqa():
    torch.manual_seed(0)
    attn = Attention(d_model=32, n_head=4, n_kv_heads=2, head_dim=8).eval()
    x = torch.randn(2, 7, 32)
    with record_attention(attn) as probs:
        y = attn(x, is_causal=True)
    (p,) = probs
    assert p.shape == (2, 4, 7, 7)
    assert torch.allclose(p.sum(-1), torch.ones(2, 4, 7), atol=1e-6)
    assert torch.all(p.triu(1) == 0)  # causal
    q, k, v = attn.qkv(x).view(2, 7, 8, 8).split([4, 2, 2], dim=2)
    v = v.transpose(1, 2).repeat_interleave(2, dim=1)  # query head h reads KV head h // 2
    by_hand = attn.proj((p @ v).transpose(1, 2).reshape(2, 7, 32))
    assert torch.allclose(by_hand, y, atol=1e-5)
    assert attn.record is None  # recording ends with the block


def test_explicit_masks_and_unchanged_model_output():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4)
    mask = causal_mask(3, 5)  # lower-right aligned, as with a cache
    p = attention_probs(q, k, mask)
    assert torch.all(p[0, :, 0, 3:] == 0) and torch.all(p[0, :, 2] > 0)
    model = build_model(get_preset("llama-tiny", vocab_size=20, d_model=32, n_layer=2, block_size=16)).eval()
    ids = torch.randint(20, (2, 9))
    with torch.no_grad():
        plain = model(ids)
        with record_attention(model) as probs:
            recorded = model(ids)
    assert torch.equal(plain, recorded) and len(probs) == 2
