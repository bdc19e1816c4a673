"""PEFT interop both ways on tiny local models (nothing downloaded): our LoRA exported as a PEFT
adapter loads onto our Hugging Face export with the same logits, and a LoRA trained by PEFT on a
Hugging Face LLaMA/GPT-2 imports into lmlab with the same logits."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import lmlab
from lmlab.errors import LmlabError
from lmlab.interop.hf import export_hf, load_hf
from lmlab.interop.peft import export_peft, import_peft
from lmlab.models.registry import save_model
from lmlab.tuning import TuningOptions, apply_tuning, save_tuning
from tests.parity import randomize
from tests.tuning.conftest import perturb, tiny

ATOL = 1e-4


def _ids(vocab: int = 61) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("kind,targets,rslora", [
    ("llama", ["q", "v"], False),
    ("llama", ["qkv", "proj", "w13", "w2"], True),  # whole fused layers: one PEFT LoRA per projection
    ("gpt2", ["q", "v", "fc", "mlp.proj"], False),  # slices of c_attn: one block-diagonal LoRA
    ("gpt2", ["qkv", "attn.proj"], True),
])
def test_export_loads_in_peft(tmp_path, kind, targets, rslora):
    model = tiny(kind)
    export_hf(model, tmp_path / "hf")
    apply_tuning(model, TuningOptions(method="lora", r=4, alpha=8, rslora=rslora, targets=targets))
    perturb(model)
    export_peft(model, tmp_path / "peft")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = _ids()
    with torch.no_grad():
        base = hf(x).logits
    peft = PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    with torch.no_grad():
        ours = model(x)
        theirs = peft(x).logits
    assert (theirs - base).abs().max() > 1e-2  # the adapter loaded and changes the model
    assert (ours - theirs).abs().max() < ATOL


def test_export_cli(tmp_path, cli):
    base = tiny()
    save_model(base, tmp_path / "base")
    export_hf(base, tmp_path / "hf")
    apply_tuning(base, TuningOptions(method="lora", r=2, targets=["k", "w1", "w2"]))
    perturb(base)
    save_tuning(base, tmp_path / "run", base=tmp_path / "base")
    r = cli("export", "peft", "--ckpt", tmp_path / "run", "--out", tmp_path / "peft", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["modules"] == 2 * 3 and "adapter_model.safetensors" in info["files"]
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(f"model.layers.{i}.{m}" for i in range(2)
                                              for m in ("self_attn.k_proj", "mlp.gate_proj", "mlp.down_proj"))
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "hf"), tmp_path / "peft")
    with torch.no_grad():
        assert (peft.eval()(_ids()).logits - base(_ids())).abs().max() < ATOL
    r = cli("export", "peft", "--ckpt", tmp_path / "run", "--out", tmp_path / "peft")
    assert r.returncode == 2 and "--overwrite" in r.stderr


def _train_peft(model: torch.nn.Module, config: LoraConfig, vocab: int) -> PeftModel:
    """Wrap ``model`` in PEFT and train the LoRA a few steps (B leaves zero)."""
    peft = get_peft_model(model, config)
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=2e-2)
    x = torch.randint(0, vocab, (4, 16), generator=torch.Generator().manual_seed(4))
    peft.train()
    for _ in range(3):
        opt.zero_grad()
        peft(input_ids=x, labels=x).loss.backward()
        opt.step()
    return peft.eval()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_import_peft_trained_adapter(tmp_path, cli, kind):
    torch.manual_seed(0)
    if kind == "llama":
        hf = randomize(LlamaForCausalLM(LlamaConfig(
            vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)))
        every = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        config = LoraConfig(r=4, lora_alpha=16, target_modules=every,
                            rank_pattern={"v_proj": 2}, alpha_pattern={"down_proj": 4}, use_rslora=True)
    else:
        gpt2 = GPT2Config(vocab_size=97, n_embd=64, n_layer=2, n_head=4, n_positions=64)
        hf = randomize(GPT2LMHeadModel(gpt2), std=0.1)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"],
                            fan_in_fan_out=True, layers_to_transform=[1], layers_pattern="h")
    hf.save_pretrained(tmp_path / "hf")
    base_logits_model = load_hf(tmp_path / "hf")
    peft = _train_peft(hf, config, 97)
    peft.save_pretrained(tmp_path / "peft")
    if kind == "gpt2":  # the command end to end once; the function for the other
        r = cli("import", "peft", "--src", tmp_path / "peft", "--base", tmp_path / "hf",
                "--out", tmp_path / "run", "--json")
        assert r.returncode == 0, r.stderr
        # layer 1 only: c_attn 64->192, attn.c_proj 64->64, c_fc 64->256, mlp.c_proj 256->64, rank 4
        assert json.loads(r.stdout)["trainable"] == 4 * ((64 + 192) + (64 + 64) + (64 + 256) + (256 + 64))
    else:
        model = load_hf(tmp_path / "hf")
        import_peft(tmp_path / "peft", model)
        save_tuning(model, tmp_path / "run", base=tmp_path / "hf")
    ours, _ = lmlab.load(tmp_path / "run")
    x = _ids(97)
    with torch.no_grad():
        theirs = peft(x).logits
        assert (theirs - base_logits_model(x)).abs().max() > 1e-3  # the trained adapter changes the model
        assert (ours(x) - theirs).abs().max() < ATOL


def test_import_refusals(tmp_path):
    hf = randomize(LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=1, num_attention_heads=4)))
    hf.save_pretrained(tmp_path / "hf")
    dora = LoraConfig(r=2, target_modules=["q_proj"], use_dora=True)
    get_peft_model(hf, dora).save_pretrained(tmp_path / "dora")
    with pytest.raises(LmlabError, match="DoRA"):
        import_peft(tmp_path / "dora", load_hf(tmp_path / "hf"))
    hf = randomize(LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=1, num_attention_heads=4)))
    get_peft_model(hf, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "plain")
    other = tiny(vocab_size=97, n_layer=1, d_model=48, n_head=4, n_kv_heads=4)
    with pytest.raises(LmlabError, match="another shape"):
        import_peft(tmp_path / "plain", other)
    with pytest.raises(LmlabError, match="no adapter_config.json"):
        import_peft(tmp_path, tiny())
