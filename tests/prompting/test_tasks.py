"""Built-in in-context tasks: answers are right by construction; user files are read and checked."""

import random
import re

import pytest

from lmlab.errors import LmlabError
from lmlab.prompting.tasks import get_task, kv_lookup_example, linear_regression_example, word_task


def test_kv_lookup_answer_is_the_asked_keys_digit():
    rng = random.Random(0)
    for _ in range(50):
        d = kv_lookup_example(rng)
        pairs, key = d.input.split("; ")
        mapping = dict(p.split("=") for p in pairs.split())
        assert len(mapping) == 4 and d.label == mapping[key]


def test_linear_regression_answer_lies_on_the_line():
    rng = random.Random(0)
    for _ in range(50):
        d = linear_regression_example(rng)
        points = [(int(x), int(y)) for x, y in re.findall(r"f\((\d)\)=(\d+)", d.input)]
        (x0, y0), (x1, y1) = points[:2]
        a = (y1 - y0) // (x1 - x0)
        b = y0 - a * x0
        assert all(y == a * x + b for x, y in points)
        x = int(re.search(r"f\((\d)\)=\?", d.input).group(1))
        assert d.label == str(a * x + b)


def test_synthetic_tasks_are_seeded_and_kinds_of_answers():
    kv = get_task("kv-lookup", seed=1)
    assert kv.test == get_task("kv-lookup", seed=1).test != get_task("kv-lookup", seed=2).test
    assert kv.labels == list("0123456789")
    assert get_task("linear-regression").labels is None  # open answers


def test_word_tasks_split_words_into_pool_and_questions(tmp_path):
    words = ["apple", "bread", "cider", "dough", "eagle", "fable"]
    t = word_task("first-letter", words, seed=0)
    assert {d.input for d in t.pool} | {d.input for d in t.test} == set(words)
    assert not {d.input for d in t.pool} & {d.input for d in t.test}
    assert all(d.label == d.input[0] for d in t.pool + t.test)
    assert all(d.label == d.input[-1] for d in word_task("last-letter", words, 0).test)
    (tmp_path / "c.txt").write_text("The Apple, and bread! a cider; dough eagle fable to", encoding="utf-8")
    assert get_task("repeat-word", corpus=str(tmp_path / "c.txt")).labels is None
    with pytest.raises(LmlabError, match="need at least 4"):
        word_task("first-letter", ["apple"], 0)


def test_sentiment_task_reads_the_rated_snippets(sentiment_env):
    t = get_task("sentiment")
    assert t.labels == ["negative", "positive"]
    assert t.pool and t.test and {d.label for d in t.pool} == {"negative", "positive"}
    assert t.template("plain").render([], "x") == "Review: x\nSentiment:"


def test_jsonl_task_and_its_errors(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text('{"input": "2+2", "label": 4}\n{"input": "1+1", "label": "2", "split": "train"}\n'
                 '{"input": "3+3", "label": "6", "split": "test"}\n', encoding="utf-8")
    t = get_task(str(f))
    assert t.labels == ["2", "4", "6"] and t.leave_one_out
    assert [d.input for d in t.pool] == ["1+1", "2+2"] and [d.input for d in t.test] == ["3+3", "2+2"]
    f.write_text('{"input": "2+2"}\n', encoding="utf-8")
    with pytest.raises(LmlabError, match=r"mine.jsonl:1: expected"):
        get_task(str(f))
    with pytest.raises(LmlabError, match="unknown task"):
        get_task("no-such-task")
