"""Examples as model input: encoding per family, padding, and the resumable shuffled batches."""

from __future__ import annotations

import torch

from lmlab.adapt.examples import ExampleBatches, encode_texts, pad_batch
from lmlab.data.special import add_objective_tokens, special_token
from lmlab.data.tokenizers import train_tokenizer

TEXTS = ["the film was good", "a very bad plot indeed", "x"]


def tokenizer(masks: bool = False):
    tok = train_tokenizer("char", TEXTS * 5)
    if masks:
        add_objective_tokens(tok)
    return tok


def test_decoder_text_ends_with_end_of_text_even_when_cut():
    tok = tokenizer()
    ids = encode_texts(tok, TEXTS, "decoder", max_len=8)
    assert all(seq[-1] == tok.eot_id for seq in ids)
    assert ids[0][:-1] == tok.encode("the film was good")[:7] and len(ids[1]) == 8
    assert ids[2] == tok.encode("x") + [tok.eot_id]


def test_encoder_text_is_wrapped_in_cls_and_sep_when_the_tokenizer_has_them():
    tok = tokenizer(masks=True)
    cls, sep = special_token(tok, "cls")[1], special_token(tok, "sep")[1]
    ids = encode_texts(tok, TEXTS, "encoder", max_len=6)
    assert all(seq[0] == cls and seq[-1] == sep and len(seq) <= 6 for seq in ids)
    assert ids[0][1:-1] == tok.encode("the film was good")[:4]
    plain = encode_texts(tokenizer(), TEXTS, "encoder", max_len=6)  # no [CLS]/[SEP]: the text alone
    assert plain[0] == tokenizer().encode("the film was good")[:6]


def test_rnn_text_is_just_cut_and_never_empty():
    tok = tokenizer()
    ids = encode_texts(tok, ["the film was good", ""], "rnn", max_len=5)
    assert ids[0] == tok.encode("the film was good")[:5] and ids[1] == [tok.eot_id]


def test_pad_batch_right_pads_with_a_mask():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_batches_cover_each_epoch_once_and_resume_at_the_same_place():
    seqs = [[i + 1] * (1 + i % 3) for i in range(10)]
    targets = list(range(10))
    a = ExampleBatches(seqs, targets, batch_size=4, seed=3, pad_id=0, device=torch.device("cpu"))
    seen = []
    for _ in range(5):  # 20 examples: exactly two epochs of 10
        seen += a.next()["labels"].tolist()
    assert sorted(seen[:10]) == targets and sorted(seen[10:]) == targets and seen[:10] != seen[10:]
    b = ExampleBatches(seqs, targets, batch_size=4, seed=3, pad_id=0, device=torch.device("cpu"))
    for _ in range(2):
        b.next()
    c = ExampleBatches(seqs, targets, batch_size=4, seed=3, pad_id=0, device=torch.device("cpu"))
    c.load_state_dict(b.state_dict())
    for _ in range(4):
        nb, nc = b.next(), c.next()
        assert all(torch.equal(nb[k], nc[k]) for k in nb)
    batch = a.next()
    assert batch["input_ids"].shape[0] == 4 and batch["labels"].dtype == torch.long
    for row, m, label in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True):
        assert row[: int(m.sum())].tolist() == seqs[int(label)]  # the example's own ids, then padding
    reg = ExampleBatches(
        seqs, [0.5] * 10, batch_size=2, seed=0, pad_id=0, device=torch.device("cpu"), regression=True
    )
    assert reg.next()["labels"].dtype == torch.float32
