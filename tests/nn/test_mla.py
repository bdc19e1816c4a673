"""Multi-head Latent Attention: the two decode paths agree, the cache holds only [c_KV; k_R] and gives
the no-cache outputs, the Decoder's switch and config checks, and a tiny deepseek-tiny pretraining run."""

from __future__ import annotations

import json

import pytest
import torch

from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.generate import beam_search, generate_ids
from lmlab.models import Decoder, DecoderConfig, build_model, get_preset
from lmlab.nn.linear import use_gemv_layout
from lmlab.nn.mla import MLACache, MultiHeadLatentAttention
from lmlab.train.log import read_metrics
from tests.conftest import prepare_word_soup
from tests.parity import randomize

MLA = dict(vocab_size=101, block_size=64, n_layer=2, n_head=4, d_model=64, norm="rmsnorm", mlp="swiglu",
           pos="rope", bias=False, attn="mla", kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16,
           v_head_dim=12)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models: one thread is fastest on a shared CPU."""


def mla_model(**kw) -> Decoder:
    torch.manual_seed(0)
    return randomize(Decoder(DecoderConfig(**{**MLA, **kw})))


def run_cached(model: Decoder, x: torch.Tensor, prefill: int,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of ``x`` read as a prefill of ``prefill`` tokens then one token a step through the cache."""
    B, T = x.shape
    pos = None if mask is None else (mask.long().cumsum(1) - 1).clamp(min=0)
    cache = model.new_kv_cache(B, T + 3)

    def step(a: int, b: int) -> torch.Tensor:
        return model(x[:, a:b], kv_cache=cache, attention_mask=None if mask is None else mask[:, :b],
                     positions=None if pos is None else pos[:, a:b])

    with torch.no_grad():
        return torch.cat([step(0, prefill)] + [step(t, t + 1) for t in range(prefill, T)], dim=1)


def test_naive_and_absorbed_paths_agree_on_any_chunk():
    torch.manual_seed(0)
    attn = MultiHeadLatentAttention(64, 4, 32, 8, 16, 12, q_lora_rank=24).eval()
    for p in attn.parameters():
        torch.nn.init.normal_(p, 0.0, 0.2)
    B, T, L = 2, 6, 20
    latent = torch.randn(B, L, 32 + 8)
    q_nope, q_rope = torch.randn(B, T, 4, 16), torch.randn(B, T, 4, 8)
    mask = torch.rand(B, 1, T, L) > 0.3
    mask[..., 0] = True
    with torch.no_grad():
        for m in (mask, None):
            naive, absorbed = (f(q_nope, q_rope, latent, m, False) for f in (attn.naive, attn.absorbed))
            assert naive.shape == (B, T, 64)
            assert (naive - absorbed).abs().max().item() < 1e-5
        one = [f(q_nope[:, :1], q_rope[:, :1], latent, mask[:, :, :1], False)
               for f in (attn.naive, attn.absorbed)]
        assert (one[0] - one[1]).abs().max().item() < 1e-5
        square = latent[:, :T]  # a fresh sequence: SDPA's causal flag
        causal = [f(q_nope, q_rope, square, None, True) for f in (attn.naive, attn.absorbed)]
        assert (causal[0] - causal[1]).abs().max().item() < 1e-5


def test_absorbed_path_reads_column_major_weights_for_any_batch():
    # generation lays weights out column-major (use_gemv_layout); W_UK/W_UV are views of kv_b's
    torch.manual_seed(0)
    attn = MultiHeadLatentAttention(64, 4, 32, 8, 16, 12, q_lora_rank=24).eval()
    for p in attn.parameters():
        torch.nn.init.normal_(p, 0.0, 0.2)
    B, L = 3, 10
    latent = torch.randn(B, L, 32 + 8)
    with torch.no_grad():
        for T in (1, 4):
            q_nope, q_rope = torch.randn(B, T, 4, 16), torch.randn(B, T, 4, 8)
            row = attn.absorbed(q_nope, q_rope, latent, None, False)
            use_gemv_layout(attn)
            assert not attn.kv_b.weight.is_contiguous()
            col = attn.absorbed(q_nope, q_rope, latent, None, False)
            torch.testing.assert_close(col, row, atol=1e-6, rtol=1e-6)
            assert (attn.naive(q_nope, q_rope, latent, None, False) - col).abs().max().item() < 1e-5
            for p in attn.parameters():  # back to row-major for the next T
                p.data = p.data.contiguous()


@pytest.mark.parametrize("q_lora_rank", [None, 24])
@pytest.mark.parametrize("path", ["naive", "absorbed"])
def test_cache_gives_the_no_cache_logits(q_lora_rank, path):
    model = mla_model(q_lora_rank=q_lora_rank)
    model.set_mla_decode(path)
    x = torch.randint(0, 101, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(x)
    assert 5 < model.blocks[0].attn.absorb_max_queries < 22
    for prefill in (5, 22):  # absorbed mode: a short prefill attends over the latent, a long one expands it
        assert (run_cached(model, x, prefill) - full).abs().max().item() < 1e-5
    mask = torch.ones(2, 24, dtype=torch.bool)
    mask[0, :4] = False  # left padding
    pos = (mask.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(x, attention_mask=mask, positions=pos)
    assert (run_cached(model, x, 6, mask) - ref)[mask].abs().max().item() < 1e-5


def test_naive_and_absorbed_decoding_agree_and_the_switch_is_used(monkeypatch):
    model = mla_model(q_lora_rank=24)
    x = torch.randint(0, 101, (2, 24), generator=torch.Generator().manual_seed(2))
    out = {}
    for path in ("naive", "absorbed"):
        model.set_mla_decode(path)
        out[path] = run_cached(model, x, 8)
    assert (out["naive"] - out["absorbed"]).abs().max().item() < 1e-5
    calls = []
    monkeypatch.setattr(MultiHeadLatentAttention, "absorbed",
                        lambda self, *a: calls.append(1) or MultiHeadLatentAttention.naive(self, *a))
    run_cached(model, x, 8)
    assert len(calls) == 2 * (1 + 16)  # 2 layers x (prefill + 16 steps)
    calls.clear()
    model.set_mla_decode("naive")
    run_cached(model, x, 8)
    with torch.no_grad():
        model(x)  # no cache: always the naive path
    assert not calls


def test_greedy_generation_is_the_same_on_both_paths_and_without_cache():
    model = mla_model()
    prompts = [[5, 9, 2], [7, 1, 1, 3, 8, 4, 4]]  # left-padded batch
    model.set_mla_decode("naive")
    naive = generate_ids(model, prompts, 30, temperature=0)
    model.set_mla_decode("absorbed")
    assert generate_ids(model, prompts, 30, temperature=0) == naive
    assert generate_ids(model, prompts, 30, temperature=0, use_cache=False) == naive
    def beams(**kw) -> list[list[list[int]]]:
        return [[b.tokens for b in row] for row in beam_search(model, prompts, 12, num_beams=3, **kw)]

    assert beams() == beams(use_cache=False)  # MLACache.reorder follows the beams


def test_cache_holds_only_the_latent_and_the_rope_key():
    model = mla_model(q_lora_rank=24)
    cfg = model.config
    cache = model.new_kv_cache(3, 40)
    assert isinstance(cache, MLACache)
    tensors = [v for v in vars(cache).values() if isinstance(v, torch.Tensor)]
    assert len(tensors) == 1 and tensors[0].shape == (2, 3, 40, 32 + 8)
    assert cache.nbytes == cfg.n_layer * 3 * 40 * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 4
    assert model.new_kv_cache(1, 10, dtype=torch.bfloat16).nbytes == 2 * 1 * 10 * 40 * 2
    x = torch.randint(0, 101, (3, 7))
    with torch.no_grad():
        model(x, kv_cache=cache)
        attn, h = model.blocks[0].attn, model.tok_emb(x)
        c_kv, k_r = attn.kv_a(model.blocks[0].norm1(h)).split([32, 8], dim=-1)
        cos, sin = model.rope(0, 7)
        from lmlab.nn.positions import apply_rope

        expected = torch.cat([attn.kv_norm(c_kv), apply_rope(k_r[:, :, None], cos, sin)[:, :, 0]], dim=-1)
    assert cache.length == 7 and cache.max_len == 40
    assert torch.allclose(cache.latent[0, :, :7], expected, atol=1e-6)
    assert not cache.latent[:, :, 7:].any()
    cache.reorder(torch.tensor([2, 0, 0]))
    assert torch.equal(cache.latent[0, 1, :7], expected[0])
    assert torch.equal(cache.latent[0, 0, :7], expected[2])
    cache.reset()
    assert cache.length == 0


def test_flops_per_token_counts_mla_widths():
    model = mla_model()
    c = model.config
    n = model.num_params(non_embedding=True) + c.vocab_size * c.d_model
    assert model.flops_per_token(32) == 6 * n + 6 * c.n_layer * c.n_head * (16 + 8 + 12) * 32


def test_deepseek_v2_lite_preset_has_the_real_attention_shape():
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    cfg = get_preset("deepseek-v2-lite")
    assert (cfg.d_model, cfg.n_head, cfg.n_layer, cfg.kv_lora_rank, cfg.qk_rope_head_dim,
            cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.q_lora_rank, cfg.vocab_size) == \
        (2048, 16, 27, 512, 64, 128, 128, None, 102400)
    with torch.device("meta"):
        ours = build_model(cfg)
        hf = DeepseekV3ForCausalLM(DeepseekV3Config(
            vocab_size=102400, hidden_size=2048, intermediate_size=10944, num_hidden_layers=27,
            num_attention_heads=16, num_key_value_heads=16, q_lora_rank=None, kv_lora_rank=512,
            qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, first_k_dense_replace=27))
    assert ours.num_params() == sum(p.numel() for p in hf.parameters())
    # cache: (d_c + d_h^R) = 576 numbers per token per layer
    assert ours.new_kv_cache(1, 4096, device="meta").nbytes == 27 * 4096 * 576 * 4


def test_set_mla_decode_errors():
    with pytest.raises(LmlabError, match="attn=mha"):
        build_model(get_preset("llama-tiny")).set_mla_decode("absorbed")
    with pytest.raises(LmlabError, match="not one of naive, absorbed"):
        mla_model().set_mla_decode("fast")


@pytest.mark.parametrize("kw, message", [
    (dict(qk_rope_head_dim=7), "must be even"),
    (dict(n_kv_heads=2), "must equal n_head"),
    (dict(pos="learned"), "set pos=rope"),
    (dict(kv_lora_rank=0), "kv_lora_rank must be a positive integer"),
])
def test_bad_mla_configs_give_one_line_errors(kw, message):
    with pytest.raises(LmlabError, match=message) as e:
        DecoderConfig(**{**MLA, **kw})
    assert "\n" not in str(e.value)


def test_pretrain_deepseek_tiny_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LMLAB_PEAK_FLOPS", "1e11")
    data = prepare_word_soup(tmp_path)
    out = tmp_path / "run"
    assert main(["pretrain", "--model", "deepseek-tiny", "--d-model", "32", "--block-size", "32",
                 "--batch-size", "8", "--max-steps", "30", "--lr", "3e-3", "--warmup-steps", "3",
                 "--precision", "fp32", "--device", "cpu", "--no-progress", "--log-interval", "1",
                 "--eval-iters", "1", "--data", str(data), "--out", str(out)]) == 0
    losses = [r["loss"] for r in read_metrics(out) if "loss" in r]
    assert len(losses) == 30 and sum(losses[-5:]) / 5 < losses[0] - 0.5
    cfg = build_model(get_preset("deepseek-tiny")).config
    from lmlab.loader import load

    model, _ = load(out)
    assert model.config.attn == "mla" and model.config.kv_lora_rank == cfg.kv_lora_rank
    capsys.readouterr()
    texts = []
    for path in ("naive", "absorbed"):
        assert main(["generate", "--ckpt", str(out), "--prompt", "the fox", "--max-new-tokens", "20",
                     "--temperature", "0", "--mla-decode", path, "--json"]) == 0
        texts.append(capsys.readouterr().out)
    completions = [json.loads(t.strip().splitlines()[-1])["completions"] for t in texts]
    assert completions[0][0]["tokens"] == 20 and completions[0] == completions[1]
