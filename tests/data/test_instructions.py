"""The instruction set made from data: speeches and speakers parsed from play texts, answers that
follow from the data, fixed splits with no held-out source in train, and the CLI's files."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from lmlab.align.prompts import read_prompts
from lmlab.align.sft import read_conversations
from lmlab.cli import main
from lmlab.data.instructions import (
    build_instructions,
    expand_names,
    parse_speeches,
    rating_answer,
)
from lmlab.data.labelled import get_labelled

pytestmark = pytest.mark.usefixtures("sentiment_env")

LINES = ["the quick brown fox jumps over the lazy dog again today",
         "now is the winter of our discontent made glorious summer here",
         "what light through yonder window breaks it is the east and more",
         "all the world is a stage and all the men and women merely players"]


def _play(title: str, speakers: list[str], n: int, seed: int, abbreviate: bool = False) -> str:
    """A play in the corpus's layout: title, persons, then blocks 'NAME.' + speech lines."""
    rng = random.Random(seed)
    head = f"{title.upper()}\n\nby William Shakespeare\n\n\nPersons Represented.\n\n" + \
        "\n".join(f"{s}, a person of the play." for s in speakers) + "\n\n\nACT I.\n\n[Enter all.]\n"
    blocks = []
    for i in range(n):
        who = speakers[i % len(speakers)]
        name = who[:3] + "." if abbreviate else who.upper() + "."
        words = f"{rng.choice(LINES)} {title.lower()} line {i}"
        blocks.append(f"{name}\n[Aside.] {words}\nand so it ends {i}.")
    return head + "\n" + "\n\n".join(blocks) + "\n"


@pytest.fixture
def plays(tmp_path) -> Path:
    folder = tmp_path / "plays"
    folder.mkdir()
    (folder / "hamlet_gut.txt").write_text(_play("Hamlet", ["Hamlet", "Horatio", "Polonius"], 60, 0,
                                                 abbreviate=True))
    (folder / "tempest_gut.txt").write_text(_play("The Tempest", ["Prospero", "Lady Miranda"], 60, 1))
    (folder / "sonnets_gut.txt").write_text("THE SONNETS\n\nI\n\nFrom fairest creatures we desire\n")
    return folder


def test_speeches_and_speakers_are_parsed_from_the_text():
    text = _play("Hamlet", ["Hamlet", "Horatio", "Polonius"], 9, 0, abbreviate=True)
    header, speeches = parse_speeches(text)
    assert len(speeches) == 9 and "Persons Represented" in header
    assert speeches[0].speaker == "Ham" and speeches[0].lines[1] == "and so it ends 0."
    assert speeches[0].lines[0].endswith("hamlet line 0") and speeches[0].lines[0][:-14] in LINES
    assert all(not ln.startswith("[") and "Aside" not in ln for s in speeches for ln in s.lines)
    assert expand_names(header, {"Ham", "Hor", "Pol", "KING"}) == {
        "Ham": "Hamlet", "Hor": "Horatio", "Pol": "Polonius", "KING": "King"}
    # a capitalised line heading fewer than three blocks is verse, not a speaker
    _, few = parse_speeches("A\n\nReady.\nsome words here\n\nX.\none\n\nX.\ntwo\n\nX.\nthree\n")
    assert {s.speaker for s in few} == {"X"}


def test_answers_follow_from_the_data(plays):
    data = build_instructions(["sentiment", "speaker", "play", "arithmetic"], 80, seed=0,
                              shakespeare=str(plays), max_add=20, max_factor=9)
    records = [r for rs in data.splits.values() for r in rs]
    by_task = {t: [r for r in records if r["task"] == t]
               for t in ("sentiment", "speaker", "play", "arithmetic")}
    assert all(len(v) > 20 for v in by_task.values())
    for r in by_task["arithmetic"]:
        a, op, b = r["messages"][0]["content"].removeprefix("What is ").rstrip("?").split()
        assert int(r["answer"]) == (int(a) + int(b) if op == "+" else int(a) * int(b))
    ratings = {e.text: e for s in ("train", "validation", "test")
               for e in get_labelled("sentiment-movies").examples(s, "lm")}
    for r in by_task["sentiment"]:
        ex = ratings[r["messages"][0]["content"].split("\n\n", 1)[1]]
        want = {"positive", "negative"} if "positive or negative" in r["messages"][0]["content"] else None
        if want:
            assert r["answer"] == ("positive" if ex.rating >= 0.5 else "negative")
        else:
            assert r["answer"] == rating_answer(ex.rating)
    assert {r["answer"] for r in by_task["play"]} == {"Hamlet", "The Tempest"}  # the sonnets are no play
    speakers = {"Hamlet", "Horatio", "Polonius", "Prospero", "Lady Miranda"}
    assert {r["answer"] for r in by_task["speaker"]} <= speakers
    for r in by_task["speaker"]:
        play = "Hamlet" if r["answer"] in {"Hamlet", "Horatio", "Polonius"} else "The Tempest"
        assert f"Shakespeare's {play}, who" in r["messages"][0]["content"]
    for r in by_task["play"]:  # each speech carries its play's name in this fake corpus
        assert f"{r['answer'].lower()} line" in r["messages"][0]["content"]
    assert rating_answer(2.5) == "3" and rating_answer(-0.5) == "0" and rating_answer(-3.7) == "-4"


def _source(record: dict) -> str:
    """The text a question is about: the quoted snippet or speech, or an arithmetic problem's
    unordered pair and operation."""
    q = record["messages"][0]["content"]
    if "\n\n" in q:
        return q.split("\n\n", 1)[1]
    a, op, b = q.removeprefix("What is ").rstrip("?").split()
    return f"{op}:{sorted([int(a), int(b)])}"


def test_cli_writes_fixed_splits_without_held_out_sources_in_train(plays, tmp_path, capsys):
    args = ["data", "instructions", "--shakespeare", str(plays), "--per-task", "60", "--max-add", "30",
            "--json"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    counts = json.loads(capsys.readouterr().out)["counts"]
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    for split in ("train", "validation", "test"):
        a = (tmp_path / "a" / f"{split}.jsonl").read_bytes()
        assert a == (tmp_path / "b" / f"{split}.jsonl").read_bytes()  # one seed, one set
        assert len(a.splitlines()) == sum(counts[split].values()) > 0
    split = {s: [json.loads(x) for x in (tmp_path / "a" / f"{s}.jsonl").read_text().splitlines()]
             for s in ("train", "validation", "test")}
    train_sources = {_source(r) for r in split["train"]}
    assert not any(_source(r) in train_sources for r in split["validation"] + split["test"])
    assert {r["task"] for r in split["test"]} == {"sentiment", "speaker", "play", "arithmetic"}
    # lmlab sft reads it; prompt readers get the question without its answer
    convs = read_conversations(tmp_path / "a" / "test.jsonl")
    assert len(convs) == len(split["test"]) and convs[0][1][-1]["role"] == "assistant"
    prompts = read_prompts(tmp_path / "a" / "test.jsonl")
    assert prompts[0] == split["test"][0]["messages"][:1]
    assert (tmp_path / "a" / "config.yaml").is_file() and (tmp_path / "a" / "meta.json").is_file()


@pytest.mark.parametrize("flags, message", [
    (["--tasks", "poetry"], "each must be one of sentiment, speaker, play, arithmetic"),
    (["--shakespeare", "/nonexistent/plays"], "is not a folder"),
    (["--per-task", "0"], "--per-task must be at least 1"),
    (["--max-words", "2"], "--max-words at least 6"),
])
def test_bad_options_are_one_line(tmp_path, capsys, flags, message):
    assert main(["data", "instructions", "--out", str(tmp_path / "x"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_long_sources_are_left_out(plays):
    data = build_instructions(["sentiment", "speaker"], 500, shakespeare=str(plays), max_words=8)
    records = [r for rs in data.splits.values() for r in rs]
    assert records and all(len(r["messages"][0]["content"].split("\n\n", 1)[1].split()) <= 8 for r in records)
    assert {r["task"] for r in records} == {"sentiment"}  # every fake speech is longer than 8 words


@pytest.mark.slow
def test_the_real_plays_give_speakers_and_titles(shakespeare):
    from lmlab.data.corpora import shakespeare_dir

    data = build_instructions(["speaker", "play"], 100000, shakespeare=str(shakespeare_dir()))
    records = [r for rs in data.splits.values() for r in rs]
    titles = {r["answer"] for r in records if r["task"] == "play"}
    speakers = Counter(r["answer"] for r in records if r["task"] == "speaker")
    assert len(titles) == 37 and {"Hamlet", "King Lear", "The Tempest"} <= titles  # the poems are no plays
    assert speakers["Hamlet"] > 100 and speakers["Ham"] == 0  # Hamlet's "Ham." expanded from the persons
    assert len(records) > 20000 and data.counts["test"]["speaker"] > 1000
