"""The encoder-decoder model: presets, forward semantics (padding, caches, loss), limits, files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmlab.errors import LmlabError
from lmlab.models import EncDecConfig, EncoderDecoder, build_model, get_preset, load_model, save_model
from lmlab.models.encdec import PRESETS, with_special_ids

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models; a shared CPU
TINY = ["transformer-tiny", "t5-tiny", "t5-v1_1-tiny", "bart-tiny"]
V = 61


def tiny(name: str, **kw) -> EncoderDecoder:
    torch.manual_seed(0)
    model = build_model(get_preset(name, **{"vocab_size": V, "block_size": 32, "d_model": 32, "n_head": 4,
                                            "head_dim": None, **kw}))
    with torch.no_grad():  # larger random weights than the init, so every part of the model matters
        for n, p in model.named_parameters():
            if p.dim() > 1 or n.endswith("rel.weight"):
                p.normal_(0.0, 0.3 if name.startswith("t5") else 0.15)
        if model.final_logits_bias is not None:
            model.final_logits_bias.normal_(0.0, 0.5)
    return model.eval()


@pytest.mark.parametrize("name,params", [("t5-small", 60_506_624), ("t5-v1_1-small", 76_961_152),
                                         ("bart-base", 139_420_416)])
def test_real_presets_have_the_published_parameter_counts(name, params):
    with torch.device("meta"):
        assert build_model(get_preset(name)).num_params() == params


def test_presets_and_their_families():
    with torch.device("meta"):
        base = build_model(get_preset("transformer-base"))
    assert 60e6 < base.num_params() < 66e6  # Vaswani et al.: 65M with their vocabulary
    names = ("t5-small", "t5-v1_1-small", "bart-base", "transformer-base")
    t5, v11, bart, vas = (get_preset(n) for n in names)
    assert (t5.pos, t5.norm, t5.post_norm, t5.scale_logits, t5.objective) == (
        "relative", "rmsnorm", False, True, "span-corruption")
    assert (v11.gated, v11.act, v11.tie_embeddings, v11.scale_logits) == (True, "gelu_tanh", False, False)
    assert (bart.pos, bart.pos_offset, bart.embed_norm, bart.logits_bias, bart.objective) == (
        "learned", 2, True, True, "denoise")
    assert (vas.pos, vas.post_norm, vas.embed_scale, vas.act) == ("sinusoidal", True, True, "relu")
    assert t5.decoder_start_token_id == t5.pad_token_id and bart.decoder_start_token_id == bart.eos_token_id
    for name in PRESETS:
        cfg = get_preset(name)
        assert cfg.max_positions == (None if name.startswith("t5") else cfg.block_size)


def test_config_errors_name_the_fix():
    with pytest.raises(LmlabError, match="pos='rope' is not one of sinusoidal, learned, relative"):
        EncDecConfig(pos="rope")
    with pytest.raises(LmlabError, match="not divisible"):
        EncDecConfig(d_model=30, n_head=4)
    with pytest.raises(LmlabError, match="eos_token_id=9 is outside the vocabulary"):
        EncDecConfig(vocab_size=8, eos_token_id=9, pad_token_id=0)
    with pytest.raises(LmlabError, match="objective"):
        EncDecConfig(objective="mlm")


def test_with_special_ids_keeps_each_family_start_convention():
    t5 = with_special_ids(get_preset("t5-small"), pad_id=5, eos_id=6)
    bart = with_special_ids(get_preset("bart-base"), pad_id=5, eos_id=6, bos_id=7)
    assert (t5.pad_token_id, t5.eos_token_id, t5.decoder_start_token_id) == (5, 6, 5)
    assert (bart.pad_token_id, bart.eos_token_id, bart.decoder_start_token_id) == (5, 6, 6)
    assert bart.bos_token_id == 7


def _batch():
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, V, (2, 9), generator=g)
    mask = torch.ones_like(src)
    mask[1, 6:] = 0
    return src, mask, torch.randint(3, V, (2, 7), generator=g)


@pytest.mark.parametrize("name", TINY)
def test_padding_is_never_seen(name):
    model = tiny(name)
    src, mask, dec = _batch()
    with torch.no_grad():
        batched = model(src, dec, mask)
        alone = model(src[1:, :6], dec[1:])
        other_pad = model(src.masked_fill(mask == 0, 7), dec, mask)
        all_real = model(src, dec, torch.ones_like(mask))  # an all-ones mask is dropped: same as none
        unmasked = model(src, dec)
    torch.testing.assert_close(all_real, unmasked)
    torch.testing.assert_close(batched[1:], alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batched, other_pad)
    assert (batched[1] - model(src[1:], dec[1:])[0]).abs().max() > 1e-3  # unmasked padding would change it


@pytest.mark.parametrize("name", TINY)
def test_cached_decoding_equals_the_full_pass(name):
    model = tiny(name)
    src, mask, dec = _batch()
    with torch.no_grad():
        full = model(src, dec, mask)
        memory = model.encode(src, mask)
        cache, cross = model.new_kv_cache(2, 8), model.new_cross_cache()
        first = model.decode(dec[:, :3], memory, mask, cache, cross)  # a chunk, then one token a step
        rest = [model.decode_step(dec[:, t:t + 1], memory, mask, cache, cross) for t in range(3, 7)]
    torch.testing.assert_close(torch.cat([first, torch.stack(rest, 1)], 1), full, atol=1e-4, rtol=1e-4)
    assert all(kv is not None for kv in cross.kv) and cache.length == 7


def test_cross_keys_and_values_are_computed_once_per_generation():
    model = tiny("t5-tiny")
    src, mask, dec = _batch()
    calls = []
    for block in model.decoder.blocks:
        block.cross_attn.kv.register_forward_hook(lambda *a: calls.append(1))
    memory = model.encode(src, mask)
    cache, cross = model.new_kv_cache(2, 8), model.new_cross_cache()
    with torch.no_grad():
        for t in range(5):
            model.decode_step(dec[:, t:t + 1], memory, mask, cache, cross)
    assert len(calls) == model.config.n_dec_layer


@pytest.mark.parametrize("name", TINY)
def test_loss_is_the_mean_cross_entropy_over_counted_labels(name):
    model = tiny(name)
    src, mask, labels = _batch()
    labels[0, 5:] = -100
    dec = model.shift_right(labels)
    assert dec[0, 0] == model.config.decoder_start_token_id and dec[0, 6] == model.config.pad_token_id
    logits = model(src, dec, mask)
    ref = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(model(src, dec, mask, targets=labels), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(src, attention_mask=mask, targets=labels), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(LmlabError, match="decoder_input_ids or targets"):
        model(src)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        model = tiny("bart-tiny", dropout=0.0).train()
        model.set_gradient_checkpointing(ckpt)
        src, mask, labels = _batch()
        model(src, attention_mask=mask, targets=labels).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_absolute_positions_limit_the_length_and_t5_has_none():
    for name in ("bart-tiny", "transformer-tiny"):
        model = tiny(name, block_size=8)
        with pytest.raises(LmlabError, match="source has 9 tokens but the model has 8 source positions"):
            model(torch.ones(1, 9, dtype=torch.long), torch.ones(1, 2, dtype=torch.long))
        with pytest.raises(LmlabError, match="target has 9 tokens but the model has 8 target positions"):
            model(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 9, dtype=torch.long))
    t5 = tiny("t5-tiny", block_size=8)
    assert t5(torch.ones(1, 40, dtype=torch.long), torch.ones(1, 20, dtype=torch.long)).shape == (1, 20, V)


def test_flops_count_encoder_decoder_and_head():
    model = tiny("t5-tiny")
    c = model.config
    n = model.num_params(non_embedding=True) + V * c.d_model
    per_token = model.flops_per_token(16)
    assert 6 * n < per_token < 6 * n * 1.5  # 6N for equal lengths, plus attention
    assert model.flops_per_token(16, target_len=4) < per_token  # short targets (span corruption) cost less


@pytest.mark.parametrize("name", TINY)
def test_save_and_load_through_the_registry(tmp_path, name):
    model = tiny(name)
    save_model(model, tmp_path)
    back = load_model(tmp_path)
    assert isinstance(back, EncoderDecoder) and back.config == model.config
    src, mask, dec = _batch()
    with torch.no_grad():
        assert torch.equal(back(src, dec, mask), model(src, dec, mask))
    if model.config.tie_embeddings:
        assert back.lm_head.weight is back.tok_emb.weight
