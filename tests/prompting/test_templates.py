"""Prompt templates render exactly; demonstrations are drawn reproducibly; too few examples are refused."""

import pytest

from lmlab.errors import LmlabError
from lmlab.prompting.templates import Demo, Template, select_demos

DEMOS = [Demo("a fine film", "positive"), Demo("dull and long", "negative")]


def test_plain_k_shot_renders_exactly():
    t = Template("plain", "", "Review: ", "Sentiment:")
    assert t.render(DEMOS, "what a joy") == (
        "Review: a fine film\nSentiment: positive\n\n"
        "Review: dull and long\nSentiment: negative\n\n"
        "Review: what a joy\nSentiment:")
    assert t.continuation("positive") == " positive"


def test_zero_shot_is_the_query_alone():
    t = Template("plain", "", "Review: ", "Sentiment:")
    assert t.render([], "what a joy") == "Review: what a joy\nSentiment:"


def test_instruction_format_puts_the_instruction_first():
    t = Template("instruction", "Classify the sentiment.", "Review: ", "Sentiment:")
    assert t.render(DEMOS[:1], "meh") == (
        "Classify the sentiment.\n\nReview: a fine film\nSentiment: positive\n\nReview: meh\nSentiment:")


def test_chat_format_uses_the_chat_template():
    t = Template("chat", "Classify the sentiment.")
    assert t.render(DEMOS[:1], "meh") == (
        "<|im_start|>system\nClassify the sentiment.<|im_end|>\n"
        "<|im_start|>user\na fine film<|im_end|>\n"
        "<|im_start|>assistant\npositive<|im_end|>\n"
        "<|im_start|>user\nmeh<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert t.continuation("negative") == "negative"
    assert t.answer_end() == "<|im_end|>"


def test_compact_separators():
    t = Template("plain", input_prefix="", output_prefix=":", label_sep="", separator=" ", io_sep="")
    assert t.render([Demo("q", "7"), Demo("b", "1")], "q") == "q:7 b:1 q:"


def test_unknown_format_and_missing_instruction_are_refused():
    with pytest.raises(LmlabError, match="unknown prompt format"):
        Template("fancy")
    with pytest.raises(LmlabError, match="needs an instruction"):
        Template("chat")


def test_selection_is_seeded_and_never_the_query():
    pool = [Demo(f"x{i}", str(i % 2)) for i in range(50)]
    a = select_demos(pool, 5, seed=3)
    assert a == select_demos(pool, 5, seed=3)
    assert a != select_demos(pool, 5, seed=4)
    assert len(set(a)) == 5 and all(d in pool for d in a)
    for seed in range(20):
        assert pool[7] not in select_demos(pool, 49, seed=seed, exclude=pool[7])


def test_more_shots_than_examples_says_how_many_exist():
    pool = [Demo(f"x{i}", "y") for i in range(3)]
    with pytest.raises(LmlabError, match=r"4 shots asked but only 3 labelled examples exist"):
        select_demos(pool, 4, seed=0)
