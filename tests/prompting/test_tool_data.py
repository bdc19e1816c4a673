"""Tool-use data made by code and the CLI around it: calls that really help, held-out questions,
both modes in training, `lmlab tools eval` and `tools ask` end to end on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmlab.align.sft import read_conversations
from lmlab.cli import main
from lmlab.prompting.calculator import calculate
from tests.align.conftest import make_tiny_base
from tests.data.test_instructions import _play

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def plays(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plays")
    (folder / "hamlet_gut.txt").write_text(_play("Hamlet", ["Hamlet", "Horatio", "Polonius"], 80, 0))
    (folder / "tempest_gut.txt").write_text(_play("The Tempest", ["Prospero", "Lady Miranda"], 80, 1))
    return folder


@pytest.fixture(scope="module")
def data(plays, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tooldata") / "d"
    assert main(["tools", "data", "--out", str(out), "--per-task", "40", "--shakespeare", str(plays),
                 "--min-digits", "3", "--max-digits", "4"]) == 0
    return out


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def test_training_data_mixes_real_tool_calls_and_direct_answers(data):
    meta = json.loads((data / "meta.json").read_text())
    train = _jsonl(data / "train.jsonl")
    assert {r["mode"] for r in train} == {"tools", "direct"} and len(train) == sum(meta["train"].values())
    assert read_conversations(data / "train.jsonl")  # valid SFT records, tools included
    for r in train:
        if r["mode"] != "tools":
            assert "tools" not in r and r["messages"][-1]["content"] == r["answer"]
            continue
        call = json.loads(r["messages"][1]["tool_calls"][0]["function"]["arguments"])
        result = r["messages"][2]["content"]
        if r["task"] == "arithmetic":
            assert result == calculate(call["expression"]) == r["answer"]
        else:  # the search result holds the answer, and the query quotes the question
            assert r["answer"] in result and call["query"] in " ".join(r["messages"][0]["content"].split())
    assert (data / "config.yaml").exists()


def test_held_out_questions_are_not_in_training(data):
    train = {r["messages"][0]["content"] for r in _jsonl(data / "train.jsonl")}
    test = _jsonl(data / "test.jsonl")
    assert test and all(r["messages"][0]["content"] not in train for r in test)
    assert {r["task"] for r in test} == {"arithmetic", "play", "speaker"}


def test_eval_and_ask_run_end_to_end(data, tmp_path, capsys):
    run = make_tiny_base(tmp_path / "run", block_size=512)
    out = tmp_path / "eval"
    capsys.readouterr()
    assert main(["tools", "eval", "--ckpt", str(run), "--data", str(data), "--limit", "2",
                 "--max-new-tokens", "8", "--out", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["tasks"]
    assert [r["task"] for r in rows] == ["arithmetic", "play", "speaker"]
    assert all(r["questions"] == 2 and 0 <= r["accuracy_tools"] <= 1 for r in rows)
    assert (out / "results.json").exists() and (out / "samples.md").read_text().startswith("# Tool use")
    assert main(["tools", "ask", "What is 12 * 7?", "--ckpt", str(run), "--max-new-tokens", "4"]) == 0
    assert "answer:" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--tasks", "poetry"], "unknown tool task 'poetry'"),
    (["--min-digits", "5", "--max-digits", "3"], "--min-digits"),
    (["--tool-share", "2"], "--tool-share"),
    (["--per-task", "0"], "--per-task"),
])
def test_bad_data_options_are_one_line(tmp_path, capsys, args, message):
    assert main(["tools", "data", "--out", str(tmp_path / "d"), "--tasks", "arithmetic", *args]) == 2
    assert message in capsys.readouterr().err


def test_existing_data_is_kept_without_overwrite(data, capsys):
    before = (data / "train.jsonl").read_bytes()
    assert main(["tools", "data", "--out", str(data), "--tasks", "arithmetic"]) == 2
    assert "already holds" in capsys.readouterr().err and (data / "train.jsonl").read_bytes() == before
