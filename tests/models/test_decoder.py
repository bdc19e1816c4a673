"""The decoder model: configs, presets, forward semantics, init, FLOPs, checkpointing and files."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from lmlab.errors import LmlabError
from lmlab.models import PRESETS, Decoder, DecoderConfig, build_model, get_preset, load_model, save_model
from lmlab.models.io import read_config

TINY = dict(vocab_size=61, block_size=32, n_layer=2, n_head=4, d_model=32)


def tiny(kind: str = "llama", **kw) -> Decoder:
    torch.manual_seed(0)
    return build_model(get_preset(f"{kind}-tiny", **{**TINY, **kw})).eval()


@pytest.mark.parametrize("name,params", [("gpt2-124m", 124_439_808), ("gpt2-350m", 354_823_168),
                                         ("llama-1b", 1_235_814_400), ("llama2-7b", 6_738_415_616),
                                         ("llama-8b", 8_030_261_248)])
def test_real_presets_have_the_published_parameter_counts(name, params):
    with torch.device("meta"):
        model = build_model(get_preset(name))
    assert model.num_params() == params


def test_cpu_presets_sizes():
    with torch.device("meta"):
        sizes = {n: build_model(get_preset(n)).num_params() for n in PRESETS if n.endswith(("tiny", "small"))}
    assert sizes["gpt2-tiny"] < 1_000_000 and sizes["llama-tiny"] < 1_000_000
    assert 5_000_000 <= sizes["llama-small"] <= 10_000_000


def test_preset_errors_name_the_fix():
    with pytest.raises(LmlabError, match="gpt2-tiny"):
        get_preset("gpt5")
    with pytest.raises(LmlabError, match="unknown model config keys n_heads"):
        get_preset("gpt2-tiny", n_heads=3)
    with pytest.raises(LmlabError, match="multiple of n_kv_heads"):
        get_preset("llama-tiny", n_kv_heads=3)
    with pytest.raises(LmlabError, match="not divisible"):
        DecoderConfig(d_model=30, n_head=4)
    with pytest.raises(LmlabError, match="norm"):
        DecoderConfig(norm="batchnorm")


def test_presets_differ_by_family():
    g, l = get_preset("gpt2-tiny"), get_preset("llama-small")
    assert (g.norm, g.mlp, g.pos, g.bias, g.tie_embeddings) == ("layernorm", "gelu", "learned", True, True)
    assert (l.norm, l.mlp, l.pos, l.bias) == ("rmsnorm", "swiglu", "rope", False)
    assert l.n_kv_heads < l.n_head
    assert get_preset("llama-1b").rope_scaling["rope_type"] == "llama3"


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_forward_shape_and_causality(kind):
    model = tiny(kind)
    x = torch.randint(0, 61, (2, 20))
    logits = model(x)
    assert logits.shape == (2, 20, 61) and logits.dtype == torch.float32
    y = x.clone()
    y[:, 12:] = (y[:, 12:] + 1) % 61
    torch.testing.assert_close(model(y)[:, :12], logits[:, :12])
    assert not torch.allclose(model(y)[:, 12:], logits[:, 12:])
    torch.testing.assert_close(model(x, last_only=True), logits[:, -1:])


def test_sinusoidal_positions_model_runs_and_round_trips(tmp_path):
    model = tiny("gpt2", pos="sinusoidal")
    assert model.num_params() == tiny("gpt2").num_params() - 32 * 32
    x = torch.randint(0, 61, (1, 10))
    save_model(model, tmp_path / "m.safetensors")
    torch.testing.assert_close(load_model(tmp_path / "m.safetensors")(x), model(x))


def test_left_padded_row_gives_the_same_logits():
    model = tiny("llama")
    x = torch.randint(0, 61, (1, 7))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], 1)
    mask = torch.tensor([[0, 0, 0] + [1] * 7])
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    torch.testing.assert_close(model(padded, positions=pos, attention_mask=mask)[:, 3:], model(x),
                               atol=1e-5, rtol=1e-5)


def test_sequence_longer_than_block_size_is_refused():
    with pytest.raises(LmlabError, match="block_size 32"):
        tiny()(torch.zeros(1, 33, dtype=torch.long))


def test_tied_and_untied_heads():
    m = tiny(tie_embeddings=True)
    assert m.lm_head.weight.data_ptr() == m.tok_emb.weight.data_ptr()
    u = tiny(tie_embeddings=False)
    assert u.lm_head.weight.data_ptr() != u.tok_emb.weight.data_ptr()
    assert u.num_params() == m.num_params() + 61 * 32


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    model = build_model(get_preset("gpt2-tiny", d_model=256, n_layer=8, n_head=4))
    std = model.config.init_std
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(std, rel=0.05)
    assert model.blocks[0].attn.proj.weight.std().item() == pytest.approx(std / math.sqrt(16), rel=0.05)
    assert model.blocks[0].mlp.proj.weight.std().item() == pytest.approx(std / math.sqrt(16), rel=0.05)
    assert torch.all(model.blocks[0].attn.qkv.bias == 0) and torch.all(model.norm_f.weight == 1)


def test_num_params_and_flops_per_token():
    model = tiny("gpt2")
    c = model.config
    per_block = 12 * 32 * 32 + 13 * 32  # weights + biases + 2 LayerNorms
    assert model.num_params(non_embedding=True) == 2 * per_block + 2 * 32
    assert model.num_params() == model.num_params(non_embedding=True) + 61 * 32 + 32 * 32
    n = model.num_params(non_embedding=True) + 61 * 32
    assert model.flops_per_token(32) == 6 * n + 12 * c.n_layer * c.n_head * c.head_dim * 32


def test_gradient_checkpointing_gives_the_same_gradients():
    x = torch.randint(0, 61, (2, 16))
    grads = []
    for ckpt in (False, True):
        model = tiny("llama", dropout=0.0).train()
        model.set_gradient_checkpointing(ckpt)
        F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_dropout_only_in_training():
    model = tiny("gpt2", dropout=0.2)
    x = torch.randint(0, 61, (1, 8))
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_save_load_round_trip(tmp_path, kind):
    model = tiny(kind, tie_embeddings=True)
    path = save_model(model, tmp_path)
    assert path == tmp_path / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert "lm_head.weight" not in f.keys()  # tied: stored once
        meta = f.metadata()
    assert meta["lmlab_arch"] == "decoder"
    assert json.loads(meta["lmlab_config"])["n_layer"] == 2
    loaded = load_model(tmp_path)
    assert loaded.lm_head.weight.data_ptr() == loaded.tok_emb.weight.data_ptr()
    assert read_config(path) == model.config
    x = torch.randint(0, 61, (2, 12))
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_bf16_round_trip_keeps_dtype(tmp_path):
    model = tiny("llama", tie_embeddings=False).to(torch.bfloat16)
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.tok_emb.weight.dtype == torch.bfloat16
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert load_model(tmp_path / "m.safetensors", dtype=torch.float32).lm_head.weight.dtype == torch.float32


def test_load_errors_name_file_and_fix(tmp_path):
    with pytest.raises(LmlabError, match="no model at"):
        load_model(tmp_path / "nothing")
    path = save_model(tiny(), tmp_path / "m.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LmlabError, match="cut.safetensors.*damaged"):
        load_model(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(LmlabError, match="junk.safetensors"):
        load_model(tmp_path / "junk.safetensors")
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    cfg = tiny().config.to_dict()
    cfg["d_ff"] = 64  # the weights no longer fit the config
    save_file(state, str(tmp_path / "bad.safetensors"),
              metadata={"lmlab_arch": "decoder", "lmlab_config": json.dumps(cfg)})
    with pytest.raises(LmlabError, match="bad.safetensors do not match.*wrong shape"):
        load_model(tmp_path / "bad.safetensors")
    save_file(state, str(tmp_path / "plain.safetensors"))
    with pytest.raises(LmlabError, match="not an lmlab decoder.*import hf"):
        load_model(tmp_path / "plain.safetensors")


def test_load_state_into_a_materialised_model_copies(tmp_path):
    from lmlab.models.io import load_state

    src, dst = tiny("llama"), build_model(tiny("llama").config)
    with torch.no_grad():
        dst.tok_emb.weight.zero_()
    param = dst.tok_emb.weight
    load_state(dst, src.state_dict(), "memory")
    assert dst.tok_emb.weight is param  # same Parameter object: optimizers keep working
    x = torch.randint(0, 61, (1, 6))
    torch.testing.assert_close(dst.eval()(x), src(x))
