"""Layer groups, bottom to top, for every model family and for a task model wrapping one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models import build_model, get_preset
from lmlab.models.elmo import ELMo
from lmlab.models.seq2seq import Seq2Seq, Seq2SeqConfig
from lmlab.train.layer_groups import layer_groups

SMALL = {"vocab_size": 40}


def names(groups) -> list[list[str]]:
    return [[n for n, _ in g] for g in groups]


def roots(groups) -> list[set[str]]:
    """The first two name parts of each group's parameters (``blocks.0``, ``tok_emb.weight``, ...)."""
    return [{".".join(n.split(".")[:2]) for n, _ in g} for g in groups]


def assert_partition(model: nn.Module, groups) -> None:
    """Every parameter of the model is in exactly one group, under its own name."""
    listed = [n for g in groups for n, _ in g]
    assert sorted(listed) == sorted(n for n, _ in model.named_parameters())
    assert all(p is dict(model.named_parameters())[n] for g in groups for n, p in g)


@pytest.mark.parametrize("preset, overrides, expected", [
    # tied: the embedding is also the softmax, so it goes with the output layer (fastai's LM split)
    ("gpt2-tiny", {"n_layer": 2, "d_model": 32}, [{"pos_emb.weight"}, {"blocks.0"}, {"blocks.1"},
                                                   {"norm_f.weight", "norm_f.bias", "tok_emb.weight"}]),
    ("llama-tiny", {"n_layer": 2, "d_model": 32, "tie_embeddings": False},
     [{"tok_emb.weight"}, {"blocks.0"}, {"blocks.1"}, {"norm_f.weight", "lm_head.weight"}]),
    ("bert-tiny", {"n_layer": 2, "d_model": 32},
     [{"tok_emb.weight", "pos_emb.weight", "type_emb.weight", "norm_emb.weight", "norm_emb.bias"},
      {"blocks.0"}, {"blocks.1"}, {"mlm.bias", "mlm.dense", "mlm.norm", "pooler.weight", "pooler.bias",
                                   "nsp_head.weight", "nsp_head.bias"}]),
    ("lstm-tiny", {"n_layer": 2},
     [{"layers.0"}, {"layers.1"}, {"emb.weight", "proj.weight", "head.bias"}]),
    ("lstm-tiny", {"n_layer": 2, "tie_embeddings": False},
     [{"emb.weight"}, {"layers.0"}, {"layers.1"}, {"head.weight", "head.bias"}]),
    ("nplm-tiny", {},
     [{"emb.weight"}, {"hidden.weight", "hidden.bias"}, {"out.weight", "out.bias", "direct.weight"}]),
])
def test_groups_of_single_stack_families(preset: str, overrides: dict, expected: list[set[str]]):
    model = build_model(get_preset(preset, **SMALL, **overrides))
    groups = layer_groups(model)
    assert_partition(model, groups)
    assert roots(groups) == expected


def test_groups_of_encoder_decoders():
    t5 = build_model(get_preset("t5-tiny", **SMALL, n_layer=2, d_model=32))
    groups = layer_groups(t5)
    assert_partition(t5, groups)
    # the shared relative-position bias goes with the embeddings; each stack's norms with its ends
    assert [{".".join(n.split(".")[:3]) for n in g} for g in names(groups)] == [
        {"encoder.rel.weight"}, {"encoder.blocks.0"}, {"encoder.blocks.1", "encoder.norm.weight"},
        {"decoder.rel.weight", "decoder.blocks.0"}, {"decoder.blocks.1"},
        {"decoder.norm.weight", "tok_emb.weight"}]
    bart = build_model(get_preset("bart-tiny", **SMALL, n_layer=2, d_model=32))
    groups = layer_groups(bart)
    assert_partition(bart, groups)
    # post-norm with a tied head: no final norm, so the tied embedding-softmax alone is the top group
    assert [{".".join(n.split(".")[:3]) for n in g} for g in names(groups)] == [
        {"encoder.pos.weight", "encoder.emb_norm.weight", "encoder.emb_norm.bias"},
        {"encoder.blocks.0"}, {"encoder.blocks.1"},
        {"decoder.pos.weight", "decoder.emb_norm.weight", "decoder.emb_norm.bias", "decoder.blocks.0"},
        {"decoder.blocks.1"}, {"tok_emb.weight"}]


def test_groups_of_elmo_pair_the_two_directions():
    for preset in ("elmo-tiny", "elmo-char-tiny"):
        model = ELMo(get_preset(preset, **SMALL))  # the class itself: build_model fills a char table first
        groups = layer_groups(model)
        assert_partition(model, groups)
        got = roots(groups)
        n, tied = model.config.n_layer, preset == "elmo-tiny"
        layers = got[:n] if tied else got[1:n + 1]
        assert layers == [{f"fwd.{i}", f"bwd.{i}"} for i in range(n)]
        if tied:  # the token embedding is also the softmax: the top group
            assert len(got) == n + 1 and got[-1] == {"tok_emb.weight", "head.bias"}
        else:
            assert len(got) == n + 2 and got[-1] == {"head.weight", "head.bias"}
            assert got[0] == {"char_cnn.char_emb", "char_cnn.convs", "char_cnn.highway", "char_cnn.proj"}


def test_groups_of_bahdanau_seq2seq():
    model = Seq2Seq(Seq2SeqConfig(src_vocab_size=20, tgt_vocab_size=30, emb=8, hidden=8, attn=8))
    groups = layer_groups(model)
    assert_partition(model, groups)
    assert [{n.split(".")[0] for n in g} for g in names(groups)] == [
        {"src_emb", "tgt_emb"}, {"encoder"}, {"init_state", "attention", "decoder"}, {"pre_output", "output"}]


def test_tied_weight_sits_in_the_top_group_and_wrapped_modules_stay_in_their_block():
    model = build_model(get_preset("gpt2-tiny", **SMALL, n_layer=2, d_model=32))
    assert model.lm_head.weight is model.tok_emb.weight
    # a module wrapped inside a block (as LoRA or an adapter does) belongs to that block
    model.blocks[1].attn.adapter = nn.Linear(32, 4)
    model.extra = nn.Parameter(torch.zeros(3))  # claimed by no prefix: joins the top group
    groups = names(layer_groups(model))
    assert "tok_emb.weight" in groups[-1] and "lm_head.weight" not in sum(groups, [])
    assert groups[0] == ["pos_emb.weight"] and "blocks.1.attn.adapter.weight" in groups[2]
    assert "extra" in groups[-1]


class TaskModel(nn.Module):
    """A task model as the adapt package builds them: an unchanged backbone plus a head."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 2))


def test_task_model_adds_its_head_as_the_top_group_with_the_unused_lm_outputs():
    backbone = build_model(get_preset("lstm-tiny", **SMALL, n_layer=3, d_emb=32))
    model = TaskModel(backbone)
    groups = layer_groups(model)
    assert_partition(model, groups)
    # embedding (tied to the softmax, which a task head does not use), three LSTM layers; the LM's
    # projection and softmax bias go with the task head
    assert names(groups)[0] == ["backbone.emb.weight"]
    assert [{n.split(".")[2] for n in g} for g in names(groups)[1:4]] == [{"0"}, {"1"}, {"2"}]
    assert names(groups)[-1] == ["backbone.proj.weight", "backbone.head.bias",
                                 "head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"]
    assert len(groups) == 1 + 3 + 1
    llama = TaskModel(build_model(get_preset("llama-tiny", **SMALL, n_layer=2, d_model=32,
                                             tie_embeddings=False)))
    top = names(layer_groups(llama))
    assert top[-2] == ["backbone.norm_f.weight"] and top[-1][0] == "backbone.lm_head.weight"
    bert = TaskModel(build_model(get_preset("bert-tiny", **SMALL, n_layer=1, d_model=32)))
    top = names(layer_groups(bert))
    assert set(top[-2]) == {"backbone.pooler.weight", "backbone.pooler.bias"}  # a task head may pool
    assert all(n.startswith(("backbone.mlm", "backbone.nsp_head", "head.")) for n in top[-1])


def test_unknown_model_is_refused_naming_the_families():
    with pytest.raises(LmlabError, match="Linear has no layer groups.*decoders, encoders"):
        layer_groups(nn.Linear(3, 3))
