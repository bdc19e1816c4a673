"""Tests of the ELMo biLM and ``lmlab embed``: directions, joint training, contextual vectors, char CNN."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch

from lmlab.cli import main
from lmlab.data.prepare import load_prepared, prepare
from lmlab.data.windows import RandomWindows
from lmlab.embed.contextual import contextual_embeddings
from lmlab.errors import LmlabError
from lmlab.models import build_model, get_preset, load_model, save_model
from lmlab.models.elmo import (
    BOW,
    EOW,
    PAD_CHAR,
    ELMo,
    ElmoConfig,
    ScalarMix,
    bilm_loss,
    token_bytes,
    word_char_ids,
)
from lmlab.models.nplm import NPLM, NPLMConfig
from lmlab.train.log import read_metrics
from lmlab.train.loop import Trainer, TrainSettings
from lmlab.train.options import OptimOptions

NOUNS = {"cat": ("chases", "mouse"), "dog": ("guards", "house"), "bird": ("eats", "seed"),
         "cow": ("eats", "grass")}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def word_data(tmp_path_factory):
    """Word-level data of sentences 'the ADJ NOUN VERB the OBJECT .' where the noun fixes verb and object,
    so both directions have something to learn beyond word frequencies."""
    root = tmp_path_factory.mktemp("elmo-data")
    rng = random.Random(0)
    lines = []
    for _ in range(1500):
        noun = rng.choice(list(NOUNS))
        verb, obj = NOUNS[noun]
        lines.append(f"the {rng.choice(['red', 'big', 'old', 'small'])} {noun} {verb} the {obj} .")
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare(str(root / "corpus.txt"), root / "prep", kind="word", vocab_size=100)
    return load_prepared(root / "prep")


def unigram_entropy(tokens: np.ndarray) -> float:
    counts = np.bincount(np.asarray(tokens)).astype(float)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def train_run(preset: str, data, out, steps: int = 80):
    """Train ``preset`` on ``data`` through the real Trainer into the run folder ``out``; return
    the model, the logged metrics and ``out``."""
    torch.manual_seed(0)
    model = build_model(get_preset(preset, vocab_size=data.vocab_size), data.tokenizer())
    batches = RandomWindows(data.train, block_size=16, batch_size=8, seed=0)
    settings = TrainSettings(optim=OptimOptions(lr=1e-2, min_lr=1e-3, warmup_steps=5, weight_decay=0.0),
                             max_steps=steps, precision="fp32", show_progress=False, log_interval=1)
    Trainer(model, bilm_loss, batches, settings, out_dir=out, device=torch.device("cpu"),
            write_weights=lambda m, p: save_model(m, p)).fit()
    shutil.copy(data.dir / "tokenizer.json", out / "tokenizer.json")
    return model.eval(), read_metrics(out), out


@pytest.fixture(scope="module")
def token_run(word_data, tmp_path_factory):
    return train_run("elmo-tiny", word_data, tmp_path_factory.mktemp("elmo-run"))


@pytest.fixture(scope="module")
def char_run(word_data, tmp_path_factory):
    return train_run("elmo-char-tiny", word_data, tmp_path_factory.mktemp("elmo-char-run"))


@pytest.mark.parametrize("run", ["token_run", "char_run"])
def test_joint_training_lowers_both_directions(run, word_data, request):
    _, metrics, _ = request.getfixturevalue(run)
    first, last = metrics[0], metrics[-5:]
    assert first["loss"] == pytest.approx(first["loss_fwd"] + first["loss_bwd"], rel=1e-5)
    floor = unigram_entropy(word_data.train)
    for key in ("loss_fwd", "loss_bwd"):
        assert first[key] > floor  # starts above what word frequencies alone give
        # Well below the unigram entropy: each direction uses its context.
        assert np.mean([r[key] for r in last]) < floor - 1.0


def test_each_direction_sees_only_its_side():
    torch.manual_seed(0)
    model = ELMo(ElmoConfig(vocab_size=30, n_layer=2, d_model=8, d_hidden=12, dropout=0.0)).eval()
    ids = torch.randint(0, 30, (2, 10))
    fwd, bwd = model(ids, bidirectional=True)
    assert fwd.shape == bwd.shape == (2, 10, 30)
    assert torch.equal(model(ids), fwd)  # model(ids) is the forward LM, usable by perplexity code
    t = 5
    changed = ids.clone()
    changed[:, t] = (changed[:, t] + 1) % 30
    f2, b2 = model(changed, bidirectional=True)
    assert torch.allclose(f2[:, :t], fwd[:, :t]) and not torch.allclose(f2[:, t:], fwd[:, t:])
    assert torch.allclose(b2[:, t + 1:], bwd[:, t + 1:]) and not torch.allclose(b2[:, :t + 1], bwd[:, :t + 1])


def test_layers_shape_and_token_layer():
    torch.manual_seed(0)
    model = ELMo(ElmoConfig(vocab_size=30, n_layer=3, d_model=8, d_hidden=12)).eval()
    layers = model.layers(torch.randint(0, 30, (2, 7)))
    assert layers.shape == (4, 2, 7, 16)  # token layer + 3 biLSTM layers, forward and backward halves
    assert torch.equal(layers[0, ..., :8], layers[0, ..., 8:])
    assert model.head.weight is model.tok_emb.weight  # one softmax shared by both directions


def test_scalar_mix_is_a_softmax_weighted_sum():
    layers = torch.randn(3, 4, 6)
    mix = ScalarMix(3, [0.0, 1.0, 2.0], gamma=0.5)
    s = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    assert torch.allclose(mix(layers), 0.5 * (s[0] * layers[0] + s[1] * layers[1] + s[2] * layers[2]))
    assert torch.allclose(ScalarMix(3)(layers), layers.mean(0), atol=1e-6)
    with pytest.raises(LmlabError, match="2 mix weights for 3 layers"):
        ScalarMix(3, [1.0, 2.0])


def test_same_word_gets_different_vectors_in_different_contexts(token_run, word_data):
    model = token_run[0]
    tok = word_data.tokenizer()
    a = contextual_embeddings(model, tok, "the big cat chases the mouse .", "all")
    b = contextual_embeddings(model, tok, "the old cow eats the grass .", "all")
    assert a.tokens[4] == b.tokens[4] == "the" and a.vectors.shape == (3, 7, 64)
    assert torch.equal(a.vectors[0, 4], b.vectors[0, 4])  # the token layer has no context
    for layer in (1, 2):
        cos = torch.cosine_similarity(a.vectors[layer, 4], b.vectors[layer, 4], dim=0)
        assert cos < 0.99
    mixed_a = contextual_embeddings(model, tok, "the big cat chases the mouse .", "mix")
    mixed_b = contextual_embeddings(model, tok, "the old cow eats the grass .", "mix")
    assert mixed_a.vectors.shape == (7, 64) and mixed_a.mix == pytest.approx([1 / 3] * 3)
    assert not torch.allclose(mixed_a.vectors[4], mixed_b.vectors[4], atol=1e-3)
    top = contextual_embeddings(model, tok, "the big cat chases the mouse .", "top")
    assert torch.equal(top.vectors, a.vectors[2])


def test_char_cnn_gives_unseen_words_their_own_vectors(char_run, token_run, word_data):
    tok = word_data.tokenizer()
    unk = tok.token_to_id("<unk>")
    s1, s2 = "the zyzzyva chases the mouse .", "the quokka chases the mouse ."
    assert tok.encode(s1) == tok.encode(s2) and tok.encode(s1)[1] == unk  # both words are unknown
    token_model, char_model = token_run[0], char_run[0]
    t1, t2 = (contextual_embeddings(token_model, tok, s, "all") for s in (s1, s2))
    assert torch.equal(t1.vectors[:, 1], t2.vectors[:, 1])  # a token model sees <unk> both times
    c1, c2 = (contextual_embeddings(char_model, tok, s, "all") for s in (s1, s2))
    assert c1.tokens[1] == "zyzzyva" and not torch.allclose(c1.vectors[0, 1], c2.vectors[0, 1], atol=1e-4)
    # A known word gets the same vector from its characters as from its id.
    chars = torch.tensor([[word_char_ids(b"cat", char_model.config.max_chars)]])
    ids = torch.tensor([[tok.token_to_id("cat")]])
    assert torch.allclose(char_model.token_vectors(chars=chars), char_model.token_vectors(ids), atol=1e-6)


def test_character_table_of_each_tokenizer_kind(word_data):
    table = token_bytes(word_data.tokenizer())
    assert table[word_data.tokenizer().token_to_id("mouse")] == b"mouse"
    assert word_char_ids(b"ab", 6) == [BOW, 97, 98, EOW, PAD_CHAR, PAD_CHAR]
    assert word_char_ids("naïve".encode(), 5) == [BOW, ord("n"), ord("a"), 0xC3, EOW]  # cut to max_chars
    from lmlab.data.tokenizers import train_tokenizer

    bpe = train_tokenizer("bpe", ["the cat and the caté sat"] * 20, vocab_size=270)
    pieces = token_bytes(bpe)
    assert all(pieces[i] == bpe.decode([i]).encode() for i in bpe.encode("the cat sat"))
    assert b"\xc3" in pieces  # a lone byte of a multi-byte character maps back to the byte itself
    char = train_tokenizer("char", ["abc"])
    assert token_bytes(char)[char.token_to_id("<0x0A>")] == b"\n"


def test_embed_cli(token_run, word_data, capsys, tmp_path):
    model, _, run = token_run
    assert main(["embed", "--ckpt", str(run), "--text", "the red dog guards the house .", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"][2] == "dog" and out["shape"] == [7, 64] and len(out["embeddings"]) == 7
    assert main(["embed", "--ckpt", str(run), "--text", "the cat", "--layer-weights", "mix",
                 "--mix-weights", "0,0,30", "--gamma", "2", "--json"]) == 0
    weighted = json.loads(capsys.readouterr().out)
    top = contextual_embeddings(model, word_data.tokenizer(), "the cat", "top").vectors
    assert torch.allclose(torch.tensor(weighted["embeddings"]), 2 * top, atol=1e-4)
    dest = run / "emb.safetensors"
    assert main(["embed", "--ckpt", str(run), "--text", "the cat", "--layer-weights", "all",
                 "--out", str(dest)]) == 0
    from safetensors import safe_open

    with safe_open(str(dest), framework="pt") as f:
        assert f.get_tensor("embeddings").shape == (3, 2, 64)
        assert json.loads(f.metadata()["tokens"]) == ["the", "cat"]
    capsys.readouterr()
    assert main(["embed", "--ckpt", str(run), "--text", "the cat"]) == 0
    assert "2 tokens" in capsys.readouterr().out
    assert main(["embed", "--ckpt", str(run)]) == 2
    assert "needs --ckpt RUN" in capsys.readouterr().err
    lone = save_model(model, tmp_path / "lone.safetensors")  # no tokenizer.json beside it
    assert main(["embed", "--ckpt", str(lone), "--text", "the cat"]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err
    assert main(["embed", "--ckpt", str(lone), "--tokenizer", str(run / "tokenizer.json"),
                 "--text", "the cat", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == ["the", "cat"]


def test_save_load_round_trip_keeps_the_character_table(char_run, tmp_path):
    model = char_run[0]
    loaded = load_model(save_model(model, tmp_path))
    assert torch.equal(loaded.token_chars, model.token_chars) and loaded.config == model.config
    ids = torch.randint(0, model.config.vocab_size, (2, 6))
    assert torch.equal(loaded(ids), model(ids))


def test_bad_inputs(token_run, word_data):
    tok = word_data.tokenizer()
    with pytest.raises(LmlabError, match="need an ELMo biLM, got a NPLM"):
        contextual_embeddings(NPLM(NPLMConfig(vocab_size=tok.vocab_size)), tok, "the cat")
    with pytest.raises(LmlabError, match="no tokens"):
        contextual_embeddings(token_run[0], tok, "   ")
    with pytest.raises(LmlabError, match="d_hidden=8 must be at least d_model=16"):
        ElmoConfig(d_model=16, d_hidden=8)
    with pytest.raises(LmlabError, match="shorter than the widest filter"):
        ElmoConfig(char_cnn=True, max_chars=4, filters=[[5, 8]])
    with pytest.raises(LmlabError, match="unknown model preset 'elmo-huge'"):
        get_preset("elmo-huge")
    with pytest.raises(LmlabError, match="needs the data's tokenizer"):
        build_model(get_preset("elmo-char-tiny", vocab_size=30))
    bare = ELMo(get_preset("elmo-char-tiny", vocab_size=30))
    with pytest.raises(LmlabError, match="no vocabulary characters"):
        bare(torch.zeros(1, 3, dtype=torch.long))
