"""The encoder model (BERT, RoBERTa): presets, masks and positions, the masked-only loss, heads,
FLOPs, checkpointing and files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmlab.errors import LmlabError
from lmlab.models import build_model, get_preset, load_model, save_model
from lmlab.models.encoder import MASK_RATE, PRESETS, Encoder, EncoderConfig
from lmlab.models.registry import FAMILIES, family_of

TINY = dict(vocab_size=53, block_size=24, n_layer=2, n_head=4, d_model=32)


def tiny(kind: str = "bert", **kw) -> Encoder:
    torch.manual_seed(0)
    model = build_model(get_preset(f"{kind}-micro", **{**TINY, **kw}))
    with torch.no_grad():  # larger weights than the init, so every part moves the output
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def batch(pad: int = 0, vocab: int = 53):
    x = torch.randint(3, vocab, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(x)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    return x.masked_fill(mask == 0, pad), mask


@pytest.mark.parametrize("name,hf_class", [("bert-base", "BertForPreTraining"),
                                           ("bert-tiny", "BertForPreTraining"),
                                           ("bert-small", "BertForPreTraining"),
                                           ("roberta-base", "RobertaForMaskedLM")])
def test_real_presets_have_hugging_face_parameter_counts(name, hf_class):
    import transformers

    cfg = get_preset(name)
    kind = "Roberta" if name.startswith("roberta") else "Bert"
    hf_cfg = getattr(transformers, f"{kind}Config")(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, intermediate_size=cfg.d_ff, max_position_embeddings=cfg.n_positions,
        type_vocab_size=cfg.type_vocab_size, pad_token_id=cfg.pad_id or 0)
    with torch.device("meta"):
        ours = build_model(cfg)
        hf = getattr(transformers, hf_class)(hf_cfg)
    assert ours.num_params() == sum(p.numel() for p in hf.parameters())
    if name == "bert-base":
        assert ours.num_params() == 110_106_428
    if name == "roberta-base":
        assert ours.num_params() == 124_697_433


def test_presets_and_registry():
    assert FAMILIES["encoder"].presets is PRESETS
    bert, roberta = get_preset("bert-small"), get_preset("roberta-small")
    assert (bert.type_vocab_size, bert.pad_id, bert.nsp, bert.pooler, bert.objective) == (2, None, True, True,
                                                                                          "mlm+nsp")
    assert (roberta.type_vocab_size, roberta.pad_id, roberta.nsp, roberta.objective) == (1, 1, False, "mlm")
    assert roberta.n_positions == roberta.block_size + 2  # RoBERTa's offset: padding_idx + 1
    assert family_of(build_model(get_preset("bert-micro"))).arch == "encoder"
    with pytest.raises(LmlabError, match="not divisible"):
        EncoderConfig(d_model=30, n_head=4)
    with pytest.raises(LmlabError, match="act"):
        EncoderConfig(act="swish")
    with pytest.raises(LmlabError, match="pad_id"):
        EncoderConfig(vocab_size=10, pad_id=10)


def test_padding_does_not_reach_the_real_tokens():
    model = tiny()
    x, mask = batch()
    with torch.no_grad():
        full = model(x, mask)
        for row in range(3):
            n = int(mask[row].sum())
            alone = model(x[row:row + 1, :n])  # the same text without padding
            torch.testing.assert_close(full[row, :n], alone[0], atol=1e-5, rtol=1e-5)
        # attending to the padding would change the result
        assert (model(x)[1, :9] - full[1, :9]).abs().max() > 1e-3


def test_roberta_positions_count_real_tokens_from_pad_plus_one():
    model = tiny("roberta")
    x = torch.tensor([[5, 6, 7, 1, 1], [1, 5, 6, 7, 8]])  # pad_id 1: right padding, and a pad in front
    assert model.position_ids(x).tolist() == [[2, 3, 4, 1, 1], [1, 2, 3, 4, 5]]
    assert tiny("bert").position_ids(x) is None
    with torch.no_grad():  # left padding masked out gives the same states as no padding
        left = model.hidden_states(x[1:], torch.tensor([[0, 1, 1, 1, 1]]))[0, 1:]
        alone = model.hidden_states(x[1:, 1:])[0]
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)


def test_token_types_matter_and_default_to_zero():
    model = tiny()
    x, mask = batch()
    types = torch.zeros_like(x)
    with torch.no_grad():
        torch.testing.assert_close(model(x, mask), model(x, mask, types))
        types[:, 6:] = 1
        assert (model(x, mask, types) - model(x, mask)).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_masked_only_loss_equals_the_loss_of_the_full_logits(kind):
    model = tiny(kind)
    x, mask = batch(pad=1 if kind == "roberta" else 0)
    labels = torch.full_like(x, -100)
    labels[0, [1, 5, 9]] = torch.tensor([4, 8, 15])
    labels[1, 2] = 16
    labels[2, 0] = 23
    scored = labels != -100
    loss = model(x, mask, targets=labels)
    with torch.no_grad():
        ref = F.cross_entropy(model(x, mask)[scored], labels[scored])
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert model.mlm.dense.weight.grad.abs().sum() > 0 and model.tok_emb.weight.grad.abs().sum() > 0
    model.zero_grad()
    nothing = model(x, mask, targets=torch.full_like(x, -100))
    nothing.backward()
    assert nothing.item() == 0.0


def test_heads_pooler_nsp_and_a_model_without_an_mlm_head():
    bert = tiny()
    x, mask = batch()
    with torch.no_grad():
        h = bert.hidden_states(x, mask)
        pooled = torch.tanh(bert.pooler(h[:, 0]))
        torch.testing.assert_close(bert.nsp_logits(h), bert.nsp_head(pooled))
    assert bert.nsp_logits(h).shape == (3, 2)
    with pytest.raises(LmlabError, match="no next-sentence head"):
        tiny("roberta").nsp_logits(h)
    headless = tiny(mlm_head=False, nsp=False, pooler=True)
    assert headless.mlm is None and headless.hidden_states(x, mask).shape == (3, 12, 32)
    with pytest.raises(LmlabError, match="no masked-LM head"):
        headless(x, mask)
    with pytest.raises(LmlabError, match="exceeds the model's 24 positions"):
        bert(torch.zeros(1, 25, dtype=torch.long))


def test_flops_count_the_head_at_the_masked_positions_only():
    model = build_model(get_preset("bert-small", vocab_size=4096))
    c = model.config
    head = sum(p.numel() for p in model.mlm.parameters()) + c.vocab_size * c.d_model
    body = model.num_params(non_embedding=True) - (head - c.vocab_size * c.d_model)
    attn = 12 * c.n_layer * c.d_model * 128
    assert model.flops_per_token(128) == pytest.approx(6 * body + 6 * MASK_RATE * head + attn)
    longer = model.flops_per_token(256) - model.flops_per_token(128)
    assert longer == pytest.approx(12 * c.n_layer * c.d_model * 128)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny(dropout=0.0).train()
    x, mask = batch()
    labels = torch.where(torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) < 0.3, x, -100)
    model(x, mask, targets=labels).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert len(ref) > 30  # every block's parameters (the pooler/NSP head get none from the MLM loss)
    model.zero_grad()
    model.set_gradient_checkpointing(True)
    model(x, mask, targets=labels).backward()
    for n, g in ref.items():
        torch.testing.assert_close(model.get_parameter(n).grad, g, msg=n)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_save_and_load_through_the_registry(tmp_path, kind):
    from safetensors import safe_open

    model = tiny(kind)
    path = save_model(model, tmp_path)
    back = load_model(tmp_path)
    assert isinstance(back, Encoder) and back.config == model.config
    x, mask = batch(pad=1 if kind == "roberta" else 0)
    with torch.no_grad():
        torch.testing.assert_close(back(x, mask), model(x, mask))
    with safe_open(str(path), "pt") as f:  # the tied output matrix is the token embedding, stored once
        assert [k for k in f.keys() if f.get_slice(k).get_shape() == [53, 32]] == ["tok_emb.weight"]
