"""Infini-attention: the gated one-segment identity, the memory rules against a direct loop, cached
(token-by-token) against segmented reading, truncated BPTT, flat memory, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.generate.decode import generate_ids
from lmlab.models.decoder import Decoder, DecoderConfig
from lmlab.models.registry import get_preset
from lmlab.nn.attention import Attention
from lmlab.nn.infini import InfiniAttention, InfiniState
from lmlab.nn.positions import RotaryEmbedding, apply_rope
from lmlab.train.log import read_metrics
from lmlab.train.optim import param_groups
from tests.conftest import prepare_word_soup

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models; a shared CPU


def tiny(**kw) -> Decoder:
    """A small Infini-attention decoder (GQA, segments of 8) with random gates, in eval mode."""
    torch.manual_seed(0)
    values = dict(vocab_size=50, block_size=32, segment_len=8, d_model=32, n_head=4, n_kv_heads=2, n_layer=2)
    model = Decoder(get_preset("infini-tiny", **{**values, **kw}))
    with torch.no_grad():
        for block in model.blocks:
            block.attn.beta.normal_()
    return model.eval()


def test_memory_scale_starts_as_the_paper_and_learns_on_the_gate_lr():
    plain = tiny(memory_rule="delta")
    scaled = tiny(memory_rule="delta", memory_scale=True)
    scaled.load_state_dict(plain.state_dict(), strict=False)  # log_scale = 0: a scale of 1
    idx = torch.randint(0, 50, (2, 40))
    torch.testing.assert_close(scaled(idx), plain(idx))
    gate_group = {g["name"]: g for g in param_groups(scaled, 0.1, 1e-3)}["no_decay_lr0.01"]
    assert {id(p) for p in gate_group["params"]} >= {id(b.attn.log_scale) for b in scaled.blocks}
    assert "memory_scale" not in plain.config.to_dict() and scaled.config.to_dict()["memory_scale"]


def test_preset_and_gate_param_group():
    cfg = get_preset("infini-tiny")
    assert (cfg.attn, cfg.segment_len, cfg.d_model, cfg.n_layer, cfg.n_head, cfg.block_size) == \
        ("infini", 64, 64, 2, 4, 256)
    model = Decoder(get_preset("infini-tiny", vocab_size=50))
    groups = {g["name"]: g for g in param_groups(model, weight_decay=0.1, lr=1e-3)}
    gate = groups["no_decay_lr0.01"]
    assert gate["weight_decay"] == 0.0 and gate["lr"] == 1e-2
    assert {id(p) for p in gate["params"]} == {id(b.attn.beta) for b in model.blocks}


def test_one_segment_is_gated_local_attention():
    """Memory empty at the start, so for one segment of N tokens:
    out = W_o concat_h[(1 - sigmoid(beta_h)) softmax_causal(R q_h, R k_h) v_h + sigmoid(beta_h) * 0],
    i.e. plain causal RoPE attention (:class:`Attention`) with its output projection's head-h
    columns scaled by (1 - sigmoid(beta_h))."""
    torch.manual_seed(0)
    d, nh, nkv, hd, N = 32, 4, 2, 8, 16
    infini = InfiniAttention(d, nh, nkv, hd, segment_len=N)
    with torch.no_grad():
        infini.beta.copy_(torch.tensor([-2.0, -0.5, 0.5, 3.0]))
    plain = Attention(d, nh, nkv, hd)
    plain.qkv.load_state_dict(infini.qkv.state_dict())
    keep = (1 - torch.sigmoid(infini.beta.detach())).repeat_interleave(hd)
    with torch.no_grad():
        plain.proj.weight.copy_(infini.proj.weight * keep)
    rope = RotaryEmbedding(hd, N)
    x = torch.randn(3, N, d)
    expected = plain(x, rope(0, N), is_causal=True)
    torch.testing.assert_close(infini(x, rope), expected, rtol=0, atol=1e-6)
    state = InfiniState(1, 3, nkv, hd, N)  # the same through the state, which then holds the segment
    torch.testing.assert_close(infini(x, rope(0, N), state), expected, rtol=0, atol=1e-6)
    assert state.M[0].abs().sum() > 0 and state.z[0].min() > 0


def _direct(module: InfiniAttention, x: torch.Tensor, rope: RotaryEmbedding) -> torch.Tensor:
    """Infini-attention of ``x`` (MHA) written out: per segment, per head, per token."""
    B, T, _ = x.shape
    nh, hd, N = module.n_head, module.head_dim, module.segment_len
    q, k, v = module.qkv(x).view(B, T, 3 * nh, hd).split([nh, nh, nh], dim=2)  # (B, T, H, D)
    g = torch.sigmoid(module.beta)
    scale = torch.ones(nh) if module.log_scale is None else module.log_scale.exp()  # memory_scale
    M = torch.zeros(B, nh, hd, hd)
    z = torch.zeros(B, nh, hd)
    out = torch.zeros(B, T, nh, hd)
    for s in range(0, T, N):
        n = min(N, T - s)
        cos, sin = rope(0, n)  # positions restart in each segment
        qs, ks, vs = q[:, s:s + n], k[:, s:s + n], v[:, s:s + n]
        qr, kr = apply_rope(qs, cos, sin), apply_rope(ks, cos, sin)
        for b in range(B):
            for h in range(nh):
                for t in range(n):
                    sq = F.elu(scale[h] * qs[b, t, h]) + 1
                    den = sq @ z[b, h]
                    mem = (sq @ M[b, h]) / den if den > 0 else torch.zeros(hd)
                    w = torch.softmax(qr[b, t, h] @ kr[b, :t + 1, h].T / hd ** 0.5, dim=0)
                    local = w @ vs[b, :t + 1, h]
                    out[b, s + t, h] = g[h] * mem + (1 - g[h]) * local
                if n == N:  # a complete segment is written after it was read
                    sk = F.elu(scale[h] * ks[b, :, h]) + 1  # (N, D)
                    target = vs[b, :, h]
                    if module.memory_rule == "delta":
                        den = sk @ z[b, h]
                        target = target - (sk @ M[b, h]) / den[:, None] if bool((den > 0).all()) else target
                    M[b, h] = M[b, h] + sum(torch.outer(sk[t], target[t]) for t in range(N))
                    z[b, h] = z[b, h] + sk.sum(0)
    return module.proj(out.reshape(B, T, nh * hd))


@pytest.mark.parametrize("rule,memory_scale", [("linear", False), ("delta", False), ("delta", True)])
def test_memory_rules_match_a_direct_loop(rule, memory_scale):
    torch.manual_seed(1)
    d, nh, hd, N = 16, 2, 8, 4
    module = InfiniAttention(d, nh, nh, hd, segment_len=N, memory_rule=rule, memory_scale=memory_scale)
    with torch.no_grad():
        module.beta.copy_(torch.tensor([1.5, -0.7]))
        if memory_scale:
            module.log_scale.copy_(torch.tensor([0.8, -0.4]))
    rope = RotaryEmbedding(hd, N)
    x = torch.randn(2, 4 * N + 2, d)  # four complete segments and a partial fifth
    with torch.no_grad():
        got, want = module(x, rope), _direct(module, x, rope)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the memory term matters: segment 2 read with the memory of segment 1 differs from it read alone
    with torch.no_grad():
        assert (got[:, N:2 * N] - module(x[:, N:2 * N], rope)).abs().max() > 1e-3


@pytest.mark.parametrize("rule", ["linear", "delta"])
def test_cached_reading_equals_segmented_forward(rule):
    model = tiny(memory_rule=rule)
    idx = torch.randint(0, 50, (2, 3 * 32 + 5))  # three blocks and more: reads past block_size
    with torch.no_grad():
        full = model(idx)
        state = model.new_kv_cache(2)
        parts = [model(idx[:, :5], kv_cache=state)]  # a partial segment, then pieces crossing boundaries
        for a, b in ((5, 16), (16, 19), (19, 50)):
            parts.append(model(idx[:, a:b], kv_cache=state))
        parts += [model(idx[:, t:t + 1], kv_cache=state) for t in range(50, idx.shape[1])]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)
    assert state.length == idx.shape[1] and state.segments == idx.shape[1] // 8
    last = model(idx, last_only=True)
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-5, atol=1e-5)


def test_generation_with_state_equals_without_and_padded_rows_read_alone():
    model = tiny()
    prompts = [list(range(1, 21)), list(range(30, 33))]  # different lengths: a left-padded batch
    kw = dict(max_new_tokens=40, temperature=0.0)  # 20 + 40 > block_size 32: no context limit
    cached = generate_ids(model, prompts, use_cache=True, **kw)
    assert cached == generate_ids(model, prompts, use_cache=False, **kw)
    assert cached == [generate_ids(model, [p], **kw)[0] for p in prompts]
    assert all(len(c) == len(p) + 40 for c, p in zip(cached, prompts))


def test_beam_reorder_and_reset():
    model = tiny()
    idx = torch.randint(0, 50, (2, 11))
    state = model.new_kv_cache(2)
    with torch.no_grad():
        model(idx, kv_cache=state)
        swapped = model.new_kv_cache(2)
        model(idx.flip(0), kv_cache=swapped)
        swapped.reorder(torch.tensor([1, 0]))
        nxt = torch.tensor([[3], [4]])
        torch.testing.assert_close(model(nxt, kv_cache=swapped), model(nxt, kv_cache=state))
        state.reset()
        torch.testing.assert_close(model(idx, kv_cache=state), model(idx))


def _segment_grads(bptt: int | None, loss_segment: int) -> torch.Tensor:
    """Per-segment gradient norm of the token embeddings (4 segments of 8) for a loss on one segment."""
    model = tiny(bptt_segments=bptt, tie_embeddings=False, dropout=0.0).train()
    idx = torch.randint(0, 50, (2, 32))
    targets = torch.full_like(idx, -100)
    seg = slice(8 * loss_segment, 8 * loss_segment + 8)
    targets[:, seg] = idx[:, seg]
    grads: list[torch.Tensor] = []

    def keep_grad(module, inputs, out):
        out.register_hook(grads.append)

    model.tok_emb.register_forward_hook(keep_grad)
    model(idx, targets=targets).backward()
    assert all(b.attn.beta.grad.abs().sum() > 0 for b in model.blocks)
    return grads[0].view(2, 4, 8, -1).pow(2).sum(dim=(0, 2, 3)).sqrt()


def test_gradients_reach_earlier_segments_only_through_the_memory_and_stop_at_bptt():
    full = _segment_grads(None, loss_segment=3)
    assert (full > 1e-6).all()  # segment 0 learns from segment 3's loss: the memory's write path
    assert (_segment_grads(None, loss_segment=1)[2:] == 0).all()  # nothing flows backwards in time
    cut = _segment_grads(2, loss_segment=3)  # memory detached after segments 2 (and 4)
    assert (cut[:2] == 0).all() and (cut[2:] > 1e-6).all()
    assert (_segment_grads(1, loss_segment=3)[:3] == 0).all()  # every segment cut: the write path is dead


def _peak_bytes(fn) -> int:
    """Peak bytes of live CPU tensors allocated while ``fn()`` runs (profiler's allocation events)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def test_memory_is_flat_from_1x_to_64x_the_segments():
    model = tiny(n_layer=1)
    N = model.config.segment_len
    sizes, peaks, full_peaks = [], [], []
    for n_segments in (1, 8, 64):
        idx = torch.randint(0, 50, (1, n_segments * N))
        state = model.new_kv_cache(1)
        with torch.inference_mode():
            peaks.append(_peak_bytes(lambda i=idx, s=state: model(i, kv_cache=s, last_only=True)))
            full_peaks.append(_peak_bytes(lambda i=idx: model(i)))
        sizes.append(state.nbytes)
        assert state.segments == n_segments
    assert len(set(sizes)) == 1 and sizes[0] == model.new_kv_cache(1).nbytes
    assert max(peaks) <= 1.05 * min(peaks), peaks
    assert full_peaks[-1] > 8 * full_peaks[0]  # all logits at once do grow: the measure sees growth


def test_bad_configs_are_one_line_errors():
    base = dict(attn="infini", block_size=32, pos="rope", vocab_size=50, n_layer=1, n_head=2, d_model=16)
    with pytest.raises(LmlabError, match="segment_len=24 does not divide block_size=32"):
        DecoderConfig(**base, segment_len=24)
    with pytest.raises(LmlabError, match="set pos=rope"):
        DecoderConfig(**{**base, "pos": "learned"}, segment_len=8)
    with pytest.raises(LmlabError, match="bptt_segments"):
        DecoderConfig(**base, segment_len=8, bptt_segments=0)
    model = tiny()
    model.set_gradient_checkpointing(True)
    with pytest.raises(LmlabError, match="grad-checkpointing"):
        model.train()(torch.zeros(1, 8, dtype=torch.long))


TRAIN = ["--model", "infini-tiny", "--d-model", "32", "--n-layer", "1", "--block-size", "32",
         "--batch-size", "8", "--precision", "fp32", "--device", "cpu", "--no-progress",
         "--warmup-steps", "2", "--log-interval", "1", "--eval-iters", "1", "--lr", "1e-2",
         "--max-steps", "25"]


def test_pretrain_and_generate_through_the_cli(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("LMLAB_PEAK_FLOPS", "1e11")
    data = str(prepare_word_soup(tmp_path))
    run = str(tmp_path / "run")
    assert main(["pretrain", "--data", data, "--out", run, *TRAIN, "--model-args", "segment_len=8"]) == 0
    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    assert len(losses) == 25 and losses[-1] < 0.8 * losses[0], losses
    capsys.readouterr()
    # 9 prompt tokens + 60 new ones: past block_size 32, read through the memory
    assert main(["generate", "--ckpt", run, "--prompt", "the quick", "--max-new-tokens", "60",
                 "--temperature", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["new_tokens"] == 60 and out["completions"][0]["tokens"] == 60, out
    assert main(["pretrain", "--data", data, "--out", str(tmp_path / "bad"), *TRAIN,
                 "--model-args", "segment_len=24"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "segment_len=24 does not divide block_size=32; pick a segment_len among its divisors" in err


def test_memory_stays_fp32_under_bf16_autocast():
    model = tiny().train()
    idx = torch.randint(0, 50, (2, 32))
    state = model.new_kv_cache(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(idx, kv_cache=state, targets=idx)
    loss.backward()
    assert all(m.dtype == torch.float32 and z.dtype == torch.float32 for m, z in zip(state.M, state.z))
    assert torch.isfinite(loss) and all(b.attn.beta.grad.abs().sum() > 0 for b in model.blocks)
