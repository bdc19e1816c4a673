"""T5 and BART against Hugging Face transformers on tiny random models built locally (never downloaded):
logits parity with padding (import), exports that load in AutoModelForSeq2SeqLM with the same logits,
and greedy and beam-search generation token for token against HF ``generate``."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForSeq2SeqLM,
    BartConfig,
    BartForConditionalGeneration,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from lmlab.errors import LmlabError
from lmlab.generate import beam_search, decode
from lmlab.interop.hf import load_hf
from lmlab.interop.hf_encdec import config_from_hf, export_hf_encdec, load_hf_encdec
from lmlab.loader import load_model_any
from lmlab.models import build_model, get_preset

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models; a shared CPU
V = 99
T5_CFG = dict(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
              relative_attention_num_buckets=8, relative_attention_max_distance=16, decoder_start_token_id=0)
BART_CFG = dict(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64,
                forced_eos_token_id=None)


def randomize(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Random weights larger than HF's init (norm gains near 1, small biases), so logits are O(1),
    every part matters and random models do not collapse onto one token."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.1)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.02)
            else:
                p.normal_(0.0, std)
        for name, b in model.named_buffers():
            if "final_logits_bias" in name:
                b.normal_(0.0, 0.5)
    return model.eval()


def hf_t5(tmp_path, **kw) -> T5ForConditionalGeneration:
    model = randomize(T5ForConditionalGeneration(T5Config(**{**T5_CFG, **kw})))
    model.save_pretrained(tmp_path)
    return model


def hf_bart(tmp_path, **kw) -> BartForConditionalGeneration:
    model = randomize(BartForConditionalGeneration(BartConfig(**{**BART_CFG, **kw})), std=0.1)
    model.save_pretrained(tmp_path)
    return model


def batch(pad: int, lengths=(9, 5, 7)) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
    """Sources of different lengths: as id lists, and right-padded with their attention mask."""
    g = torch.Generator().manual_seed(2)
    sources = [torch.randint(3, V, (n,), generator=g).tolist() for n in lengths]
    ids = torch.full((len(lengths), max(lengths)), pad)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(sources):
        ids[r, :len(s)], mask[r, :len(s)] = torch.tensor(s), 1
    return sources, ids, mask


def max_logit_diff(hf: torch.nn.Module, ours: torch.nn.Module) -> float:
    _, ids, mask = batch(hf.config.pad_token_id)
    dec = torch.randint(3, V, (ids.shape[0], 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        assert theirs.abs().max() > 0.5  # logits big enough for the comparison to mean something
        return (theirs - ours(ids, dec, mask)).abs().max().item()


@pytest.mark.parametrize("kw", [dict(), dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)],
                         ids=["t5-v1.0", "t5-v1.1-gated"])
def test_t5_import_logits_parity_with_padding(tmp_path, kw):
    hf = hf_t5(tmp_path, **kw)
    ours = load_hf_encdec(tmp_path)
    assert ours.config.gated == bool(kw) and ours.config.scale_logits == (not kw)
    assert max_logit_diff(hf, ours) < 1e-4


def test_t5_v1_1_untied_head_from_an_old_checkpoint(tmp_path):
    """transformers 4 wrote v1.1 with tie_word_embeddings false and its own lm_head.weight."""
    hf_t5(tmp_path, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("scale_decoder_outputs")
    cfg["tie_word_embeddings"] = False
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    state = load_file(tmp_path / "model.safetensors")
    state["lm_head.weight"] = torch.randn(V, 32, generator=torch.Generator().manual_seed(4))
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    hf = T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    ours = load_hf_encdec(tmp_path)
    assert not ours.config.tie_embeddings and not ours.config.scale_logits
    assert torch.equal(ours.lm_head.weight, state["lm_head.weight"])
    assert max_logit_diff(hf, ours) < 1e-4


@pytest.mark.parametrize("kw", [dict(), dict(scale_embedding=True, activation_function="relu")],
                         ids=["bart-base-like", "scaled-relu"])
def test_bart_import_logits_parity_with_padding(tmp_path, kw):
    hf = hf_bart(tmp_path, **kw)
    ours = load_hf_encdec(tmp_path)
    assert torch.equal(ours.final_logits_bias, hf.final_logits_bias[0])  # random, so it is really read
    assert max_logit_diff(hf, ours) < 1e-4


@pytest.mark.parametrize("preset", ["t5-tiny", "t5-v1_1-tiny", "bart-tiny"])
def test_export_loads_in_auto_model_with_the_same_logits(tmp_path, preset):
    torch.manual_seed(0)
    ours = build_model(get_preset(preset, vocab_size=V, block_size=64, d_model=32, n_head=4, head_dim=None))
    randomize(ours, std=0.2 if preset.startswith("t5") else 0.1)
    export_hf_encdec(ours, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    hf = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == cfg["architectures"][0]
    assert max_logit_diff(hf, ours) < 1e-4
    back = load_hf_encdec(tmp_path)  # the round trip returns the same tensors
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_unsupported_and_unexportable_models_name_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "marian", "vocab_size": 10}))
    with pytest.raises(LmlabError, match="'marian'.*llama, gpt2.*t5, bart"):
        load_model_any(tmp_path)
    with pytest.raises(LmlabError, match="lacks d_kv"):
        config_from_hf({"model_type": "t5", "vocab_size": 10, "d_model": 8, "d_ff": 8, "num_layers": 1,
                        "num_heads": 2}, tied=True)
    vaswani = build_model(get_preset("transformer-tiny", vocab_size=V))
    with pytest.raises(LmlabError, match="transformer-\\* presets.*no Hugging Face counterpart"):
        export_hf_encdec(vaswani, tmp_path / "out")


def test_loader_dispatches_hf_folders_by_model_type(tmp_path):
    hf_bart(tmp_path / "bart")
    LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(tmp_path / "llama")
    assert type(load_model_any(tmp_path / "bart")).__name__ == "EncoderDecoder"
    assert type(load_model_any(tmp_path / "llama")).__name__ == "Decoder"


# ---------------------------------------------------------------- generation


def _hf_generate(hf, ids, mask, eos: int, n: int, beams: int, penalty: float, early) -> list[list[int]]:
    """HF generate with every default that could surprise set explicitly; rows without the start token
    and without the fill after their end."""
    gc = GenerationConfig(max_new_tokens=n, num_beams=beams, length_penalty=penalty, early_stopping=early,
                          do_sample=False, eos_token_id=eos, pad_token_id=hf.config.pad_token_id,
                          decoder_start_token_id=hf.config.decoder_start_token_id, bos_token_id=None,
                          forced_bos_token_id=None, forced_eos_token_id=None, no_repeat_ngram_size=0,
                          min_length=0)
    out = hf.generate(input_ids=ids, attention_mask=mask, generation_config=gc)[:, 1:].tolist()
    rows = []
    for row in out:
        end = row.index(eos) + 1 if eos in row else len(row)
        rows.append(row[:end])
    return rows


SETTINGS = [(1, 1.0, False), (3, 0.6, False), (4, 1.5, True), (4, 2.0, "never"), (3, -0.5, False)]


@pytest.mark.parametrize("family", ["t5", "t5-gated", "bart"])
def test_greedy_and_beam_search_match_hf_generate(tmp_path, family):
    if family == "bart":
        hf = hf_bart(tmp_path)
    else:  # HF's generation cache assumes as many decoder layers as encoder layers
        gated = family == "t5-gated"
        kw = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False) if gated else {}
        hf = hf_t5(tmp_path, num_decoder_layers=2, **kw)
    ours = load_hf_encdec(tmp_path)
    sources, ids, mask = batch(hf.config.pad_token_id)
    n = 12
    # an end id the random model does emit, so that hypotheses end at different lengths
    eos = decode(ours, sources, n, temperature=0, eos_id=[])[1][3]
    lengths = set()
    for beams, penalty, early in SETTINGS:
        ref = _hf_generate(hf, ids, mask, eos, n, beams, penalty, early)
        if beams == 1:
            mine = decode(ours, sources, n, temperature=0, eos_id=eos)
        else:
            mine = [b[0].tokens for b in beam_search(ours, sources, n, beams, penalty, early, eos_id=eos)]
        assert mine == ref, (beams, penalty, early)
        lengths.update(len(r) for r in mine)
    assert len(lengths) > 1 and n in lengths  # some hypotheses ended early, some ran to the limit


def test_beam_search_on_a_decoder_matches_hf_generate(tmp_path):
    torch.manual_seed(0)
    hf = randomize(LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=4,
                                                num_key_value_heads=2)))
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path)
    prompt = torch.randint(0, V, (1, 6), generator=torch.Generator().manual_seed(3))
    eos = decode(ours, prompt.tolist(), 10, temperature=0)[0][4]
    for beams, penalty, early in SETTINGS[1:]:
        gc = GenerationConfig(max_new_tokens=10, num_beams=beams, length_penalty=penalty,
                              early_stopping=early, do_sample=False, eos_token_id=eos, pad_token_id=0)
        ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=gc)
        ref = ref[0, 6:].tolist()
        mine = beam_search(ours, prompt.tolist(), 10, beams, penalty, early, eos_id=eos)[0][0].tokens
        assert mine == ref[:len(mine)] and all(t == ref[-1] for t in ref[len(mine):]), (beams, penalty, early)
