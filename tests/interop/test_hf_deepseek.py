"""Parity with Hugging Face ``DeepseekV3ForCausalLM`` (dense, tiny random models built locally): logits,
padding, greedy generation on both MLA decode paths, export/import round trips, the CLI, bad configs."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.generate import generate_ids
from lmlab.interop.hf_auto import export_hf_model, load_hf_model
from lmlab.interop.hf_deepseek import config_from_hf, export_hf_deepseek
from lmlab.models import Decoder, build_model, get_preset, save_model
from tests.parity import randomize

VOCAB = 97


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models: one thread is fastest on a shared CPU."""


def hf_config(**kw) -> dict:
    cfg = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=32,
               qk_rope_head_dim=8, qk_nope_head_dim=16,
               v_head_dim=12, first_k_dense_replace=2, max_position_embeddings=128, rms_norm_eps=1e-6,
               rope_interleave=True, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)
    return {**cfg, **kw}


def hf_deepseek(tmp_path, **kw) -> DeepseekV3ForCausalLM:
    torch.manual_seed(0)
    model = randomize(DeepseekV3ForCausalLM(DeepseekV3Config(**hf_config(**kw))))
    model.save_pretrained(tmp_path)
    return model


def max_diff(hf: torch.nn.Module, ours: Decoder, T: int = 40) -> float:
    x = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return (hf(x).logits - ours(x)).abs().max().item()


@pytest.mark.parametrize("kw", [
    dict(),  # V2-Lite-like: uncompressed queries, interleaved RoPE
    dict(q_lora_rank=24),  # V2/V3: compressed queries
    dict(rope_interleave=False, q_lora_rank=24),
    dict(rope_interleave=False, tie_word_embeddings=True, v_head_dim=32),  # v wider than q/k
], ids=["q-proj", "q-lora", "rotate-half", "tied-wide-v"])
def test_import_logits_parity(tmp_path, kw):
    hf = hf_deepseek(tmp_path, **kw)
    ours, kind = load_hf_model(tmp_path)
    assert kind == "deepseek_v3" and ours.config.attn == "mla"
    assert ours.config.q_lora_rank == kw.get("q_lora_rank")
    assert max_diff(hf, ours) < 1e-4


def test_rope_interleave_permutation_matters(tmp_path):
    hf = hf_deepseek(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "rope_interleave": False}))
    unpermuted, _ = load_hf_model(tmp_path)
    assert max_diff(hf, unpermuted) > 1e-2  # so the parity above really tests the permutation


def test_padding_mask_parity(tmp_path):
    hf = hf_deepseek(tmp_path, q_lora_rank=24)
    ours, _ = load_hf_model(tmp_path)
    x = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[0, :5] = 0  # left padding
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf(x, attention_mask=mask, position_ids=pos).logits
        got = ours(x, attention_mask=mask, positions=pos)
    assert (ref - got)[mask.bool()].abs().max().item() < 1e-4


@pytest.mark.parametrize("path", ["naive", "absorbed"])
def test_greedy_generation_matches_hf_generate(tmp_path, path):
    hf = hf_deepseek(tmp_path, q_lora_rank=24)
    ours, _ = load_hf_model(tmp_path)
    ours.set_mla_decode(path)
    prompt = torch.randint(2, VOCAB, (1, 7), generator=torch.Generator().manual_seed(3))
    ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, min_new_tokens=40,
                      do_sample=False, pad_token_id=0)
    assert generate_ids(ours, prompt, 40, temperature=0).tolist() == ref.tolist()


@pytest.mark.parametrize("rope_interleave", [True, False])
def test_export_loads_in_hf_with_the_same_logits(tmp_path, rope_interleave):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    ours = randomize(build_model(get_preset("deepseek-tiny", vocab_size=VOCAB, block_size=64,
                                            tie_embeddings=False)))
    export_hf_deepseek(ours, tmp_path, rope_interleave=rope_interleave)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["DeepseekV3ForCausalLM"] and cfg["first_k_dense_replace"] == 2
    assert cfg["rope_interleave"] is rope_interleave
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "DeepseekV3ForCausalLM"
    assert max_diff(hf, ours) < 1e-4
    back, _ = load_hf_model(tmp_path)  # and the round trip returns the same tensors
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_import_then_export_gives_back_the_hf_tensors(tmp_path):
    from safetensors.torch import load_file

    hf = hf_deepseek(tmp_path / "a", q_lora_rank=24)
    ours, _ = load_hf_model(tmp_path / "a")
    assert export_hf_model(ours, tmp_path / "b") == ("DeepseekV3ForCausalLM", [])
    back = load_file(tmp_path / "b" / "model.safetensors")
    theirs = hf.state_dict()
    assert set(back) == set(theirs)
    for k, v in theirs.items():
        assert torch.equal(back[k], v), k


def test_cli_import_export_and_load(tmp_path, capsys):
    from lmlab.data.tokenizers import train_tokenizer
    from lmlab.loader import load

    run = tmp_path / "run"
    run.mkdir()
    tok = train_tokenizer("bpe", ["the quick brown fox jumps over the lazy dog " * 30], vocab_size=300)
    tok.save(run / "tokenizer.json")
    torch.manual_seed(0)
    model = build_model(get_preset("deepseek-tiny", vocab_size=tok.vocab_size, block_size=64))
    save_model(randomize(model), run)
    assert main(["export", "hf", "--ckpt", str(run), "--out", str(tmp_path / "hf"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["architecture"] == "DeepseekV3ForCausalLM"
    assert main(["import", "hf", "--src", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    capsys.readouterr()
    a, _ = load(run)
    b, tok_b = load(tmp_path / "back")
    c, _ = load(tmp_path / "hf")  # lmlab.load reads the Hugging Face folder directly too
    assert tok_b.vocab_size == tok.vocab_size
    x = torch.randint(0, tok.vocab_size, (1, 16))
    with torch.no_grad():
        assert torch.equal(a(x), b(x)) and torch.equal(a(x), c(x))
    assert main(["generate", "--ckpt", str(tmp_path / "back"), "--prompt", "the", "--max-new-tokens", "5",
                 "--temperature", "0", "--mla-decode", "naive"]) == 0


def test_mla_decode_flag_refuses_other_models(tmp_path, capsys):
    from lmlab.data.tokenizers import train_tokenizer

    tok = train_tokenizer("bpe", ["the quick brown fox " * 30], vocab_size=280)
    tok.save(tmp_path / "tokenizer.json")
    save_model(build_model(get_preset("llama-tiny", vocab_size=tok.vocab_size, block_size=32)), tmp_path)
    assert main(["generate", "--ckpt", str(tmp_path), "--prompt", "the", "--mla-decode", "absorbed"]) == 2
    err = capsys.readouterr().err.strip()
    assert "MLA" in err and "attn=mha" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("kw, message", [
    (dict(first_k_dense_replace=1), "MoE layers"),
    (dict(first_k_dense_replace=None), "MoE layers"),
    (dict(num_key_value_heads=2), "must equal num_attention_heads"),
    (dict(qk_rope_head_dim=7), "must be even"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                           "original_max_position_embeddings": 32, "mscale_all_dim": 1.0}), "YaRN"),
    (dict(kv_lora_rank=0), "kv_lora_rank=0"),
])
def test_bad_configs_give_one_line_errors(kw, message):
    cfg = {"model_type": "deepseek_v3", **hf_config(), **kw}
    with pytest.raises(LmlabError, match=message) as e:
        config_from_hf(cfg)
    assert "\n" not in str(e.value)


def test_missing_first_k_dense_replace_defaults_to_moe(tmp_path):
    cfg = {"model_type": "deepseek_v3", **hf_config(num_hidden_layers=4)}
    del cfg["first_k_dense_replace"]  # HF's default is 3
    with pytest.raises(LmlabError, match="first_k_dense_replace=3 < num_hidden_layers=4"):
        config_from_hf(cfg)
