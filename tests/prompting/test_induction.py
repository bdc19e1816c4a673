"""Induction-head measures and the ICL emergence command on tiny settings."""

import json

import pytest
import torch
import torch.nn.functional as F

from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.models.registry import build_model, get_preset
from lmlab.nn.attention import record_attention
from lmlab.prompting.emergence import (
    TEMPLATE,
    KvBatches,
    Question,
    make_questions,
    make_tokenizer,
    perfect_lookup,
    repeated_documents,
)
from lmlab.prompting.induction import measure_induction, repeated_sequences, uniform_score
from lmlab.prompting.templates import Demo


def tiny_decoder(block_size: int = 32):
    torch.manual_seed(0)
    return build_model(get_preset("llama-tiny", vocab_size=50, d_model=32, n_layer=2, n_head=4, n_kv_heads=4,
                                  block_size=block_size)).eval()


def test_repeated_sequences_are_two_copies_without_repeats():
    ids = repeated_sequences(list(range(10, 30)), 8, 5, seed=1)
    assert ids.shape == (5, 16) and torch.equal(ids[:, :8], ids[:, 8:])
    assert all(len(set(r[:8].tolist())) == 8 and set(r.tolist()) <= set(range(10, 30)) for r in ids)
    assert torch.equal(ids, repeated_sequences(list(range(10, 30)), 8, 5, seed=1))


def test_measures_equal_a_direct_computation():
    model = tiny_decoder()
    ids = repeated_sequences(list(range(50)), 8, 6, seed=0)
    res = measure_induction(model, ids, batch_size=4)
    with torch.no_grad(), record_attention(model) as probs:
        logits = model(ids)
    loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    assert res.loss_first == pytest.approx(float(loss[:, :7].mean()), rel=1e-5)
    assert res.loss_second == pytest.approx(float(loss[:, 8:15].mean()), rel=1e-5)
    for layer, p in enumerate(probs):  # (B, heads, T, T)
        for head in range(4):
            by_hand = sum(float(p[:, head, i, i - 7].mean()) for i in range(8, 15)) / 7
            assert res.prefix_matching[layer][head] == pytest.approx(by_hand, rel=1e-5)
    assert len(res.prefix_matching) == 2 and res.best_head[2] == max(max(r) for r in res.prefix_matching)
    assert 0 < uniform_score(8) < 1 / 8
    some = measure_induction(model, ids, positions=[0, 3])
    assert some.loss_first == pytest.approx(float(loss[:, [0, 3]].mean()), rel=1e-5)
    assert some.loss_second == pytest.approx(float(loss[:, [8, 11]].mean()), rel=1e-5)
    by_hand = (float(probs[1][:, 2, 8, 1].mean()) + float(probs[1][:, 2, 11, 4].mean())) / 2
    assert some.prefix_matching[1][2] == pytest.approx(by_hand, rel=1e-5)
    with pytest.raises(LmlabError, match="offsets 0 .. 6"):
        measure_induction(model, ids, positions=[7])


def test_too_long_sequences_are_refused():
    with pytest.raises(LmlabError, match="exceed the model's context of 32"):
        measure_induction(tiny_decoder(32), repeated_sequences(list(range(50)), 20, 2, seed=0))


def test_question_prompts_and_perfect_lookup():
    q = Question([Demo("q", "7"), Demo("b", "1"), Demo("q", "7")], "b", "1")
    assert q.prompt(0) == "b" and q.prompt(2) == "q7 b1 b" and TEMPLATE.continuation("1") == "1"
    assert not q.seen(1) and q.seen(2)
    assert perfect_lookup([q], 1) == pytest.approx(0.1) and perfect_lookup([q], 2) == 1.0
    qs = make_questions(20, 4, 8, seed=0)
    assert qs == make_questions(20, 4, 8, seed=0) and all(len(x.pairs) == 8 for x in qs)
    assert all(len({d.input for d in x.pairs} | {x.key}) <= 4 for x in qs)


def test_training_batches_count_only_the_digits_and_are_seeded():
    tok = make_tokenizer()
    a = KvBatches(tok, 4, 5, 3, seed=1, device=torch.device("cpu")).next()
    again = KvBatches(tok, 4, 5, 3, seed=1, device=torch.device("cpu")).next()
    assert torch.equal(a["input_ids"], again["input_ids"])
    for ids, labels in zip(a["input_ids"], a["labels"]):
        text = tok.decode(ids.tolist())  # "k5 k5 e1 l6 i": the row without its last digit
        scored = [(i, tok.decode([t])) for i, t in enumerate(labels.tolist()) if t != -100]
        assert len(scored) == 5 and all(c.isdigit() for _, c in scored)
        assert all(text[i].isalpha() and (i + 1 == len(text) or text[i + 1] == c) for i, c in scored)
    full = KvBatches(tok, 4, 5, 1, seed=1, device=torch.device("cpu"), values_only=False).next()
    assert torch.equal(full["labels"][:, :-1], full["input_ids"][:, 1:])


def test_repeated_documents_mark_the_keys():
    tok = make_tokenizer()
    ids, positions = repeated_documents(tok, 3, 2, seed=0)
    assert ids.shape == (2, 18) and positions == [0, 3, 6]
    text = tok.decode(ids[0].tolist())
    assert text[:9] == text[9:] and len(set(text[0:9:3])) == 3
    assert all(text[j].isalpha() and text[j + 1].isdigit() for j in positions)


def test_emergence_and_induction_commands(tmp_path, capsys, one_torch_thread):
    out = tmp_path / "em"
    rc = main(["icl", "emergence", "--out", str(out), "--sizes", "16,32", "--steps", "3", "--batch-size", "4",
               "--pairs", "6", "--shots", "0,1,4", "--samples", "10", "--induction-pairs", "3",
               "--induction-samples", "3", "--no-progress", "--json"])
    assert rc == 0
    rec = json.loads(capsys.readouterr().out)
    assert [r["d_model"] for r in rec["rows"]] == [16, 32]
    for r in rec["rows"]:
        assert set(r["accuracy"]) == {"0", "1", "4"} and r["steps"] == 3
        assert r["induction"]["length"] == 9 and len(r["induction"]["prefix_matching"]) == 2
    for name in ("results.json", "results.csv", "icl-emergence.png", "config.yaml",
                 "models/d32/model.safetensors", "models/d32/tokenizer.json"):
        assert (out / name).is_file(), name
    run = str(out / "models" / "d16")
    assert main(["icl", "induction", "--ckpt", run, "--length", "6", "--samples", "4"]) == 0
    text = capsys.readouterr().out
    assert "prefix-matching score per head" in text and "strongest: layer" in text
    assert main(["icl", "emergence", "--out", str(out), "--sizes", "16"]) == 2  # results there already
    assert "--overwrite" in capsys.readouterr().err
    assert main(["icl", "emergence", "--out", str(out / "x"), "--shots", "0,30", "--pairs", "24"]) == 2
    assert "--pairs - 1 = 23" in capsys.readouterr().err
