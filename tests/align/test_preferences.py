"""Preference pairs: human pairs from ratings (the more positive text chosen, by more than the margin,
one split's texts only, a fixed seeded pairing), JSONL pairs with their hashed split, and bad records
named by file and line."""

from __future__ import annotations

import json

import pytest

from lmlab.align.preferences import (
    Pair,
    PairBatches,
    full_text,
    load_pairs,
    pairs_from_ratings,
    read_pairs,
    split_of,
)
from lmlab.data.labelled import get_labelled
from lmlab.errors import LmlabError


def test_pairs_from_ratings_prefer_the_more_positive_text_of_one_split(sentiment_env):
    corpus = get_labelled("sentiment-movies")
    ratings = {e.text: e.rating for e in corpus.examples("train", "regress")}
    pairs = pairs_from_ratings("sentiment-movies", "train", margin=1.0, seed=0)
    assert len(pairs) > len(ratings) // 2  # several rounds of pairing
    for p in pairs:
        assert p.prompt == "" and p.chosen in ratings and p.rejected in ratings
        assert ratings[p.chosen] - ratings[p.rejected] > 1.0
        assert p.margin == pytest.approx(ratings[p.chosen] - ratings[p.rejected])
    assert len({frozenset((p.chosen, p.rejected)) for p in pairs}) == len(pairs)  # no pair twice
    again = pairs_from_ratings("sentiment-movies", "train", margin=1.0, seed=0)
    other = pairs_from_ratings("sentiment-movies", "train", margin=1.0, seed=1)
    assert again == pairs and other != pairs
    assert pairs_from_ratings("sentiment-movies", "train", margin=1.0, seed=0, max_pairs=7) == pairs[:7]
    wide = pairs_from_ratings("sentiment-movies", "train", margin=3.0, seed=0)
    assert all(p.margin > 3.0 for p in wide) and len(wide) < len(pairs)
    held = {e.text for e in corpus.examples("test", "regress")}
    assert all(p.chosen in held and p.rejected in held for p in load_pairs("sentiment-movies", "test"))


def test_a_files_pairs_are_split_by_a_fixed_hash(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"q{i}", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(60)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parts = {s: load_pairs(path, s) for s in ("train", "validation", "test")}
    assert sum(len(v) for v in parts.values()) == 60 and len(parts["train"]) > 30
    assert all(split_of(p) == s for s, v in parts.items() for p in v)
    assert read_pairs(path)[3].where == f"{path}:4"


def test_records_in_every_usual_form(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [{"prompt": "Q", "chosen": " good", "rejected": " bad", "margin": 2},
             {"chosen": "whole text A", "rejected": "whole text B"},
             {"prompt": [{"role": "user", "content": "hi"}],
              "chosen": [{"role": "assistant", "content": "hello"}], "rejected": "go away"}]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    a, b, c = read_pairs(path)
    assert (a.prompt, a.chosen, a.margin) == ("Q", " good", 2.0) and full_text(a.prompt, a.chosen) == "Q good"
    assert b.prompt == "" and b.margin is None and full_text(b.prompt, b.rejected) == "whole text B"
    assert c.messages == [{"role": "user", "content": "hi"}] and c.chosen == "hello"
    assert full_text(c.prompt, c.chosen) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello"


@pytest.mark.parametrize("record, message", [
    ({"prompt": "q", "chosen": "a"}, "has no 'rejected'"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "are the same text"),
    ({"prompt": "q", "chosen": "  ", "rejected": "b"}, "'chosen' is empty"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"}, "'margin' must be a number"),
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, "'prompt' must be a string"),
])
def test_bad_records_name_the_file_and_line(tmp_path, record, message):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"})
    path.write_text(good + "\n" + json.dumps(record) + "\n")
    with pytest.raises(LmlabError, match=message) as e:
        read_pairs(path)
    assert f"{path}:2" in str(e.value)


def test_unknown_data_and_a_corpus_without_ratings_are_refused(tmp_path, sentiment_env):
    with pytest.raises(LmlabError, match="not a JSONL file of pairs"):
        load_pairs(tmp_path / "nothing.jsonl", "train")
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"text": f"t{i}", "label": "pos" if i % 2 else "neg"}) + "\n"
                              for i in range(3)))
    with pytest.raises(LmlabError, match="has no 'chosen' or 'rejected'"):
        load_pairs(labels, "train")  # a file is read as pairs
    with pytest.raises(LmlabError, match="lower --margin"):
        pairs_from_ratings("sentiment-movies", "train", margin=9.0)


def test_pair_batches_resume_where_they_stopped():
    made = []
    a = PairBatches(10, 4, seed=3, make=lambda idx: made.append(idx) or {"idx": idx})
    first = [a.next()["idx"] for _ in range(5)]
    assert sorted(sum(first[:2], []) + first[2][:2]) == list(range(10))  # an epoch visits each pair once
    b = PairBatches(10, 4, seed=3, make=lambda idx: {"idx": idx})
    for _ in range(2):
        b.next()
    c = PairBatches(10, 4, seed=3, make=lambda idx: {"idx": idx})
    c.load_state_dict(b.state_dict())
    assert [c.next()["idx"] for _ in range(3)] == first[2:]
    assert Pair("", "a", "b").prompt_value() == ""
