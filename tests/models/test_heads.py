"""Task heads on every family that has one: features, padding, pooling, save/load, refusals."""

from __future__ import annotations

import pytest
import torch

import lmlab
from lmlab.errors import LmlabError
from lmlab.models.heads import ClassifierConfig, SequenceClassifier, classifier_for
from lmlab.models.registry import build_model, get_preset, load_model, save_model

V = 50
PRESETS = {"gpt2": ("gpt2-tiny", {"block_size": 32, "n_layer": 1}),
           "llama": ("llama-tiny", {"block_size": 32, "n_layer": 1}),
           "bert": ("bert-micro", {"block_size": 32, "n_layer": 1}),
           "roberta": ("roberta-micro", {"block_size": 32, "n_layer": 1}),
           "lstm": ("lstm-tiny", {})}


def backbone(kind: str) -> torch.nn.Module:
    name, extra = PRESETS[kind]
    torch.manual_seed(0)
    return build_model(get_preset(name, vocab_size=V, **extra))


@pytest.mark.parametrize("kind", list(PRESETS))
def test_padding_does_not_change_a_sequence_s_logits(kind):
    torch.manual_seed(1)
    model = classifier_for(backbone(kind), labels=["a", "b", "c"]).eval()
    ids = torch.randint(4, V, (1, 7))
    alone = model(ids)
    padded = torch.cat([ids, torch.full((1, 5), 1)], dim=1)  # right padding with some id
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], dim=1).long()
    other = torch.randint(4, V, (1, 12))
    both = model(torch.cat([padded, other]), torch.cat([mask, torch.ones(1, 12).long()]))
    assert both.shape == (2, 3)
    torch.testing.assert_close(both[:1], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1:], model(other), atol=1e-5, rtol=1e-5)


def test_decoder_hidden_states_are_what_the_output_layer_reads():
    m = backbone("llama").eval()
    ids = torch.randint(0, V, (2, 9))
    torch.testing.assert_close(m.lm_head(m.hidden_states(ids)), m(ids))


def test_rnn_hidden_states_are_what_the_softmax_reads():
    m = backbone("lstm").eval()
    ids = torch.randint(0, V, (2, 9))
    h = m.hidden_states(ids)
    torch.testing.assert_close(m.head(m.proj(h) if m.proj is not None else h), m(ids))


def test_rnn_concat_pooling_is_last_max_mean_over_real_tokens():
    model = classifier_for(backbone("lstm")).eval()
    ids = torch.randint(0, V, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    feats = model.features(ids, mask)
    h = model.backbone.hidden_states(ids)
    d = h.shape[-1]
    assert feats.shape == (2, 3 * d)
    torch.testing.assert_close(feats[0, :d], h[0, 3])
    torch.testing.assert_close(feats[0, d:2 * d], h[0, :4].amax(0))
    torch.testing.assert_close(feats[0, 2 * d:], h[0, :4].mean(0))
    torch.testing.assert_close(feats[1, :d], h[1, 5])


def test_decoder_feature_is_the_last_real_token_and_encoder_uses_the_pooler():
    dec = classifier_for(backbone("gpt2")).eval()
    ids = torch.randint(0, V, (1, 8))
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    torch.testing.assert_close(dec.features(ids, mask), dec.backbone.hidden_states(ids)[:, 4])
    enc = classifier_for(backbone("bert")).eval()  # BERT presets have a pooler (nsp)
    assert enc.config.pooling == "pooler"
    h = enc.backbone.hidden_states(ids)
    torch.testing.assert_close(enc.features(ids), enc.backbone.pooled(h))
    rob = classifier_for(backbone("roberta"))
    assert rob.config.pooling == "cls"  # RoBERTa has no pooler: the first (<s>) state


def test_regression_head_has_one_output_and_head_hidden_adds_a_layer():
    reg = classifier_for(backbone("gpt2"), task="regress", head_hidden=16)
    out = reg(torch.randint(0, V, (4, 5)))
    assert out.shape == (4, 1)
    assert [tuple(p.shape) for p in reg.head.parameters()] == [(16, 64), (16,), (1, 16), (1,)]


@pytest.mark.parametrize("kind", ["llama", "bert", "lstm"])
def test_saved_classifier_reloads_through_the_registry_and_lmlab_load(tmp_path, kind):
    model = classifier_for(backbone(kind), labels=["neg", "pos"]).eval()
    ids = torch.randint(0, V, (2, 6))
    save_model(model, tmp_path)
    again = load_model(tmp_path)
    assert isinstance(again, SequenceClassifier) and again.config == model.config
    torch.testing.assert_close(again(ids), model(ids))
    loaded, tokenizer = lmlab.load(str(tmp_path))
    torch.testing.assert_close(loaded(ids), model(ids))
    assert tokenizer is None


def test_backbone_stays_the_unchanged_lmlab_model():
    b = backbone("llama")
    before = {k: v.clone() for k, v in b.state_dict().items()}
    model = classifier_for(b)
    assert model.backbone is b
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {"backbone", "head"}


@pytest.mark.parametrize("preset", ["nplm-tiny", "elmo-tiny", "t5-tiny"])
def test_family_without_a_head_is_refused_naming_those_with_one(preset):
    extra = {"block_size": 32} if preset == "t5-tiny" else {}
    m = build_model(get_preset(preset, vocab_size=V, **extra))
    with pytest.raises(LmlabError, match=r"has no task head yet; the model families with one are decoder"):
        classifier_for(m)


def test_config_refusals():
    with pytest.raises(LmlabError, match="does not apply to a decoder"):
        ClassifierConfig(backbone_arch="decoder", pooling="cls")
    with pytest.raises(LmlabError, match="at least two labels"):
        ClassifierConfig(labels=["only"])
    with pytest.raises(LmlabError, match="nplm model family has no task head"):
        ClassifierConfig(backbone_arch="nplm")


def test_batchnorm_head_standardises_features_that_barely_vary() -> None:
    """ULMFiT's head (batch norm before each linear layer): features with a tiny spread reach the
    first linear layer standardised in training, and eval mode uses the running statistics."""
    from lmlab.models.heads import classifier_for
    from lmlab.models.rnn import RNNLM, RNNConfig

    torch.manual_seed(0)
    lstm = RNNLM(RNNConfig(vocab_size=50, cell="lstm", n_layer=1, d_emb=8, d_hidden=12, block_size=16))
    model = classifier_for(lstm, head_hidden=6, head_norm="batchnorm", dropout=0.0)
    kinds = [type(m).__name__ for m in model.head]
    assert kinds == ["BatchNorm1d", "Dropout", "Linear", "ReLU", "BatchNorm1d", "Dropout", "Linear"]
    seen = []
    model.head[2].register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    model.train()
    model(torch.randint(0, 50, (8, 5)))
    x = seen[-1]
    assert torch.allclose(x.mean(0), torch.zeros(x.shape[1]), atol=1e-5)
    assert x.std(0, unbiased=False).min() > 0.5  # standardised (features with a spread)
    model.eval()
    assert model(torch.randint(0, 50, (1, 5))).shape == (1, 2)  # eval: running stats, batch of one
    assert classifier_for(lstm).config.head_norm == "none"
