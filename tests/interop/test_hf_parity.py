"""Logits and greedy-generation parity with Hugging Face transformers, on tiny random models built
locally (never downloaded): import (HF -> lmlab) and export (lmlab -> HF)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lmlab.errors import LmlabError
from lmlab.generate import generate_ids
from lmlab.interop.hf import config_from_hf, export_hf, load_hf
from lmlab.models import Decoder, DecoderConfig
from tests.parity import randomize

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}


def hf_llama(tmp_path, **kw) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
               rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False)
    model = randomize(LlamaForCausalLM(LlamaConfig(**{**cfg, **kw})))
    model.save_pretrained(tmp_path)
    return model


def hf_gpt2(tmp_path, **kw) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = dict(vocab_size=101, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
    model = randomize(GPT2LMHeadModel(GPT2Config(**{**cfg, **kw})), std=0.1)
    model.save_pretrained(tmp_path)
    return model


def max_diff(hf: torch.nn.Module, ours: Decoder, vocab: int, T: int = 50) -> float:
    x = torch.randint(0, vocab, (2, T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return (hf(x).logits - ours(x)).abs().max().item()


@pytest.mark.parametrize("kw", [
    dict(),  # GQA, untied
    dict(rope_parameters={"rope_theta": 500000.0, **LLAMA3_ROPE}),  # Llama 3.1 rope scaling
    # MQA, tied head, biases
    dict(num_key_value_heads=1, tie_word_embeddings=True, attention_bias=True, mlp_bias=True),
    dict(num_key_value_heads=4, head_dim=8),  # MHA with head_dim != hidden/heads
], ids=["gqa", "llama3-rope", "mqa-tied-bias", "mha-headdim"])
def test_llama_import_logits_parity(tmp_path, kw):
    hf = hf_llama(tmp_path, **kw)
    ours = load_hf(tmp_path)
    assert ours.config.n_kv_heads == hf.config.num_key_value_heads
    assert max_diff(hf, ours, 97) < 1e-5


def test_llama3_rope_scaling_matters(tmp_path):
    hf = hf_llama(tmp_path, rope_parameters={"rope_theta": 500000.0, **LLAMA3_ROPE})
    ours = load_hf(tmp_path)
    unscaled = Decoder(DecoderConfig.from_dict({**ours.config.to_dict(), "rope_scaling": None})).eval()
    unscaled.load_state_dict(ours.state_dict())
    assert max_diff(hf, unscaled, 97) > 1e-2  # so the parity above really tests the scaling


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_import_logits_parity(tmp_path, tied):
    hf = hf_gpt2(tmp_path, tie_word_embeddings=tied)
    ours = load_hf(tmp_path)
    assert ours.config.tie_embeddings == tied
    assert max_diff(hf, ours, 101) < 1e-5


def test_gpt2_from_pytorch_model_bin_with_legacy_names(tmp_path):
    hf = hf_gpt2(tmp_path / "st")
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    # the original GPT-2 file layout: no "transformer." prefix, causal-mask buffers included
    state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    state["h.0.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
    torch.save(state, folder / "pytorch_model.bin")
    assert max_diff(hf, load_hf(folder), 101) < 1e-5


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_greedy_generation_matches_hf_generate(tmp_path, family):
    hf = hf_llama(tmp_path) if family == "llama" else hf_gpt2(tmp_path)
    ours = load_hf(tmp_path)
    prompt = torch.randint(0, 97, (1, 7), generator=torch.Generator().manual_seed(3))
    ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, min_new_tokens=40,
                      do_sample=False, pad_token_id=0)
    assert generate_ids(ours, prompt, 40, temperature=0).tolist() == ref.tolist()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_export_loads_in_hf_with_the_same_logits(tmp_path, family):
    from lmlab.models import build_model, get_preset

    torch.manual_seed(0)
    over = dict(vocab_size=89, block_size=64, n_layer=2, d_model=32)
    if family == "llama":
        over.update(tie_embeddings=False, rope_theta=500000.0, rope_scaling=dict(LLAMA3_ROPE))
    ours = randomize(build_model(get_preset(f"{family}-tiny", **over)))
    export_hf(ours, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM" if family == "llama" else "GPT2LMHeadModel"]
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == cfg["architectures"][0]
    assert max_diff(hf, ours, 89, T=40) < 1e-5
    back = load_hf(tmp_path)  # and the round trip returns the same tensors
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_config_from_hf_reads_legacy_and_new_rope_keys():
    base = dict(model_type="llama", vocab_size=10, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1)
    legacy = config_from_hf({**base, "rope_theta": 500000.0, "rope_scaling": {**LLAMA3_ROPE}})
    new = config_from_hf({**base, "rope_parameters": {"rope_theta": 500000.0, **LLAMA3_ROPE}})
    assert legacy == new and legacy.rope_theta == 500000.0 and legacy.rope_scaling["factor"] == 8.0
    assert config_from_hf({**base, "rope_scaling": {"type": "linear", "factor": 2.0}}).rope_scaling == \
        {"rope_type": "linear", "factor": 2.0}
    default = {"rope_type": "default", "rope_theta": 1e4}
    assert config_from_hf({**base, "rope_parameters": default}).rope_scaling is None


def test_unsupported_models_are_refused(tmp_path):
    with pytest.raises(LmlabError, match="model_type 'bert'.*llama, gpt2"):
        config_from_hf({"model_type": "bert"})
    with pytest.raises(LmlabError, match="no config.json"):
        load_hf(tmp_path)
    from lmlab.models import build_model, get_preset

    with pytest.raises(LmlabError, match="no Hugging Face architecture"):
        export_hf(build_model(get_preset("gpt2-tiny", pos="sinusoidal")), tmp_path / "out")
