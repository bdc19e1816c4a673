"""The objectives' special tokens, example builders and resumable batch source."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from lmlab.data import collators
from lmlab.data.blanks import BlankInfillingExamples
from lmlab.data.collators import ObjectiveBatches, build_examples, eval_examples, example_rng
from lmlab.data.masking import IGNORE
from lmlab.data.prepare import load_prepared, prepare
from lmlab.data.special import N_SENTINELS, add_objective_tokens, find_special_ids, sentinel_name
from lmlab.data.tokenizers import Tokenizer, train_tokenizer
from lmlab.errors import LmlabError

TEXT = ["The quick brown fox jumps over the lazy dog. Birds sing! Do they? " * 20,
        "A second document, with more words. And sentences. " * 20]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    t = train_tokenizer("char", TEXT)
    add_objective_tokens(t)
    return t


@pytest.fixture(scope="module")
def tokens(tok) -> np.ndarray:
    ids = []
    for text in TEXT * 3:
        ids += tok.encode(text) + [tok.eot_id]
    return np.array(ids, dtype=np.uint16)


def _hf_tokenizer(specials: list[str]) -> Tokenizer:
    vocab = {w: i for i, w in enumerate(specials + ["the", "fox", ".", "dog"])}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token=specials[0]))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.add_special_tokens(specials)
    return Tokenizer(hf)


def test_special_tokens_are_appended_after_every_existing_id():
    t = train_tokenizer("char", TEXT)
    before = t.vocab_size
    ids = t.encode(TEXT[0])
    added = add_objective_tokens(t)
    assert added[:5] == ["<|mask|>", "<|cls|>", "<|sep|>", "<|sop|>", "<|eop|>"]  # <|pad|> was there
    assert added[5:] == [sentinel_name(i) for i in range(N_SENTINELS)]
    assert t.vocab_size == before + len(added) and t.encode(TEXT[0]) == ids
    found = find_special_ids(t)
    assert found.mask == before and found.sentinels == tuple(range(before + 5, before + 105))
    assert min(found.mask, found.cls, found.sep, found.sop, found.eop) >= before
    assert found.pad == t.pad_id and found.eos == t.eot_id
    assert add_objective_tokens(t) == []  # nothing is added twice


def test_hugging_face_special_tokens_are_found_by_name():
    bert = find_special_ids(_hf_tokenizer(["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"]))
    assert (bert.pad, bert.cls, bert.sep, bert.mask, bert.eos) == (1, 2, 3, 4, 3)
    t5 = find_special_ids(_hf_tokenizer(["<unk>", "<pad>", "</s>"] + [sentinel_name(i) for i in range(3)]))
    assert (t5.pad, t5.eos, t5.sentinels) == (1, 2, (3, 4, 5))
    bart = find_special_ids(_hf_tokenizer(["<unk>", "<s>", "<pad>", "</s>", "<mask>"]))
    assert (bart.bos, bart.pad, bart.eos, bart.mask, bart.cls, bart.sep) == (1, 2, 3, 4, 1, 3)


def test_a_missing_token_names_it_and_the_fix():
    plain = train_tokenizer("char", TEXT)
    with pytest.raises(LmlabError, match=r"\[MASK\] or <mask> or <\|mask\|>.*--mask-tokens"):
        build_examples("mlm", plain, 32)
    with pytest.raises(LmlabError, match=r"<extra_id_0>\.\.<extra_id_\d+> \(T5 sentinels.*--mask-tokens"):
        build_examples("span-corruption", plain, 64)
    with pytest.raises(LmlabError, match="sop.*eop.*--mask-tokens"):
        build_examples("blank-infilling", plain, 64)
    with pytest.raises(LmlabError, match="unknown objective"):
        build_examples("nope", plain, 64)


def test_prepare_mask_tokens_keeps_the_data_and_ids(text_corpus, tmp_path):
    plain, _ = prepare(str(text_corpus), tmp_path / "plain", kind="bpe", vocab_size=400)
    masked, _ = prepare(str(text_corpus), tmp_path / "masked", kind="bpe", vocab_size=400, mask_tokens=True)
    assert masked["vocab_size"] == plain["vocab_size"] + 105 and masked["fingerprint"] != plain["fingerprint"]
    a, b = load_prepared(tmp_path / "plain"), load_prepared(tmp_path / "masked")
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    assert find_special_ids(b.tokenizer()).mask == plain["vocab_size"]


def test_mlm_and_nsp_examples(tok, tokens):
    ids = find_special_ids(tok)
    mlm = build_examples("mlm", tok, 40)
    ex = mlm(tokens, 5, example_rng(0))
    chosen = ex["labels"] != IGNORE
    assert ex["input_ids"].shape == (40,) and chosen.sum() == round(0.15 * 40)
    assert (ex["labels"][chosen] == tokens[5:45][chosen]).all()
    nsp = build_examples("mlm+nsp", tok, 40)
    labels = []
    for seed in range(200):
        ex = nsp(tokens, 11, example_rng(seed))
        x, tt = ex["input_ids"], ex["token_type_ids"]
        restored = np.where(ex["labels"] != IGNORE, ex["labels"], x)
        seps = np.flatnonzero(restored == ids.sep)
        assert x.shape == tt.shape == (40,) and restored[0] == ids.cls and len(seps) == 2 and seps[1] == 39
        a = seps[0]
        assert (tt[:a + 1] == 0).all() and (tt[a + 1:] == 1).all()
        assert (restored[1:a] == tokens[11:11 + a - 1]).all()
        if ex["next_sentence_label"] == 0:  # B is the text that follows A
            assert (restored[a + 1:39] == tokens[11 + a - 1:11 + 37]).all()
        labels.append(int(ex["next_sentence_label"]))
    assert 0.4 < np.mean(labels) < 0.6


def test_span_corruption_and_denoise_examples(tok, tokens):
    ids = find_special_ids(tok)
    t5 = build_examples("span-corruption", tok, 48)
    ex = t5(tokens, 3, example_rng(1))
    assert len(ex["input_ids"]) <= 48 and len(ex["labels"]) == t5.target_length
    assert ex["input_ids"][-1] == ids.eos and ex["labels"][0] == ids.sentinels[0]
    bart = build_examples("denoise", tok, 48)
    for seed in range(20):
        ex = bart(tokens, 7, example_rng(seed))
        n = int(ex["attention_mask"].sum())
        assert (ex["labels"] == np.append(tokens[7:7 + 47], ids.eos)).all()
        assert ex["input_ids"][n - 1] == ids.eos and (ex["input_ids"][n:] == ids.pad).all()
        assert (ex["input_ids"][:n] == ids.mask).sum() >= 1


def _glm_recover(ex: dict, mask_id: int, sop: int, eop: int) -> list[int]:
    x, pos, labels = ex["input_ids"], ex["position_ids"], ex["labels"]
    a_len = int(np.argmax(labels != IGNORE))  # part B starts at the first scored position (a sop)
    spans = {}
    i = a_len
    while i < len(x) and x[i] == sop:
        j = i + 1
        while labels[j - 1] != eop:
            j += 1
        spans[int(pos[i])] = list(labels[i:j - 1])  # the span, read off the targets
        assert list(x[i + 1:j]) == spans[int(pos[i])]  # and equal to the inputs after sop
        i = j
    out = []
    for k, t in enumerate(x[:a_len]):
        out += spans.pop(k) if t == mask_id else [int(t)]
    assert not spans
    return out


def test_blank_infilling_is_recoverable_with_glm_positions_and_mask(tok, tokens):
    ids = find_special_ids(tok)
    glm = build_examples("blank-infilling", tok, 64)
    assert isinstance(glm, BlankInfillingExamples)
    for seed in range(100):
        offset = seed * 3
        ex = glm(tokens, offset, example_rng(seed))
        x, labels, attend = ex["input_ids"], ex["labels"], ex["attention_mask"]
        block = ex["block_position_ids"]
        assert _glm_recover(ex, ids.mask, ids.sop, ids.eop) == list(tokens[offset:offset + glm.window])
        a_len = int(np.argmax(labels != IGNORE))
        n = int((x != ids.pad).sum())
        assert (block[:a_len] == 0).all() and (ex["position_ids"][:a_len] == np.arange(a_len)).all()
        starts = np.flatnonzero(x == ids.sop)
        for s, e in zip(starts, list(starts[1:]) + [n]):
            assert block[s:e].tolist() == list(range(1, e - s + 1))
        assert attend[:, :a_len].all() and not attend[:a_len, a_len:].any()  # part A: bidirectional
        assert (attend[a_len:n, a_len:n] == np.tri(n - a_len, dtype=bool)).all()  # part B: causal
        assert not attend[:, n:].any()  # nobody attends to padding
        masked = int((labels != IGNORE).sum()) - len(starts)  # targets minus one eop per span
        assert masked == max(1, round(0.15 * glm.window))


def test_blank_infilling_span_statistics(tok):
    glm = BlankInfillingExamples(find_special_ids(tok), 512)
    lengths = []
    for seed in range(300):
        starts, ln = glm.spans(example_rng(seed))
        assert ln.sum() == round(0.15 * glm.window) and len(ln) <= glm.max_spans
        assert (starts[1:] >= starts[:-1] + ln[:-1]).all()
        lengths += list(ln)
    # Poisson(3) without zeros has mean 3 / (1 - e^-3) = 3.16; cutting the last span lowers it a little
    assert 2.85 < np.mean(lengths) < 3.25


@pytest.mark.parametrize("objective", collators.OBJECTIVES)
def test_batches_are_reproducible_resumable_and_rank_independent(tok, tokens, objective):
    builder = build_examples(objective, tok, 32)

    def source(**kw) -> ObjectiveBatches:
        return ObjectiveBatches(tokens, builder, objective, seed=7, **{"batch_size": 4, **kw})

    a, b = source(), source()
    first = [a.next() for _ in range(3)]
    for x, y in zip(first, [b.next() for _ in range(3)]):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    state = a.state_dict()
    after = a.next()
    c = source()
    c.load_state_dict(state)
    assert all(torch.equal(after[k], v) for k, v in c.next().items())
    # two ranks with half the batch see exactly the rows of one process
    ranks = [source(batch_size=2, rank=r, world_size=2).next() for r in (0, 1)]
    whole = source().next()
    for k in whole:
        assert torch.equal(whole[k][0::2], ranks[0][k]) and torch.equal(whole[k][1::2], ranks[1][k])
    assert first[0]["input_ids"].dtype == torch.int64
    with pytest.raises(LmlabError, match="resume with the run's own --objective"):
        ObjectiveBatches(tokens, builder, "other", batch_size=4).load_state_dict(state)


def test_static_masks_are_fixed_per_window_dynamic_ones_are_not(tok, tokens):
    builder = build_examples("mlm", tok, 16)
    short = tokens[:16]  # room for exactly one window (offset 0 every time)
    static = ObjectiveBatches(short, builder, "mlm", batch_size=1, masking="static")
    dynamic = ObjectiveBatches(short, builder, "mlm", batch_size=1, masking="dynamic")
    s = [static.next()["labels"] for _ in range(5)]
    d = [dynamic.next()["labels"] for _ in range(5)]
    assert all(torch.equal(s[0], x) for x in s)
    assert not all(torch.equal(d[0], x) for x in d)
    with pytest.raises(LmlabError, match="--masking"):
        ObjectiveBatches(short, builder, "mlm", batch_size=1, masking="sometimes")
    # validation noise depends on the window only
    one, two = eval_examples(tokens, builder, np.array([3, 9])), eval_examples(tokens, builder, np.array([3]))
    assert np.array_equal(one[0]["labels"], two[0]["labels"])


def test_data_prepare_mask_tokens_flag(text_corpus, tmp_path, monkeypatch, capsys):
    import json

    from lmlab.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["data", "prepare", "--corpus", str(text_corpus), "--tokenizer", "char", "--mask-tokens",
                 "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["out"] == "runs/data/corpus-char-masks"  # its own default folder, beside the plain one
    assert find_special_ids(load_prepared(tmp_path / meta["out"]).tokenizer()).sentinels
