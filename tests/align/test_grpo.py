"""GRPO with a verifiable reward: the arithmetic checker, and `lmlab rlhf --algo grpo` raising a
tiny policy's accuracy on sums (no value model; the ratio exactly 1 on each first minibatch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmlab.align.verifiable import (
    ArithmeticReward,
    arithmetic_answer,
    arithmetic_prompts,
    first_integer,
    verifiable_prompts,
)
from lmlab.cli import main
from lmlab.errors import LmlabError
from tests.align.tiny_policies import tiny_policy

SUMS = ["1+2=", "3+4=", "2+5=", "6+1=", "4+4=", "3+3=", "5+2=", "2+2="]


def test_arithmetic_answers_and_checks():
    assert arithmetic_answer("12+7=") == 19
    assert arithmetic_answer("What is 3 * 4?") == 12
    assert arithmetic_answer("first 1+1, then 9 - 12") == -3
    assert arithmetic_answer("no sums here") is None
    assert first_integer(" 19 apples, 3 pears") == 19 and first_integer("none") is None
    scores = ArithmeticReward().score_pairs(["12+7=", "3*4=", "2-5=", "1+1="],
                                            ["19<|endoftext|>", "13", "-3", ""])
    assert scores.tolist() == [1.0, 0.0, 1.0, 0.0]
    with pytest.raises(LmlabError, match="holds no"):
        ArithmeticReward().score_pairs(["hello"], ["1"])
    chat = [{"role": "system", "content": "Answer with a number."},
            {"role": "user", "content": "What is 6 * 7?"}]
    assert ArithmeticReward().score_pairs([chat], ["42"]).tolist() == [1.0]


def test_load_scorer_names_the_arithmetic_reward():
    from lmlab.align.reward import load_scorer

    scorer = load_scorer("arithmetic")
    assert isinstance(scorer, ArithmeticReward) and scorer.name == "arithmetic"


def test_arithmetic_prompts_are_seeded_and_named_by_count():
    assert arithmetic_prompts(5, seed=1) == arithmetic_prompts(5, seed=1) != arithmetic_prompts(5, seed=2)
    assert all(arithmetic_answer(p) is not None for p in arithmetic_prompts(50, ops="+-*"))
    assert verifiable_prompts("arithmetic:7") == arithmetic_prompts(7, 0)
    assert verifiable_prompts("prompts.txt") is None
    with pytest.raises(LmlabError, match="arithmetic:500"):
        verifiable_prompts("arithmetic:x")


def test_grpo_raises_arithmetic_accuracy(tmp_path, capsys, one_torch_thread):
    prompts = tmp_path / "sums.txt"
    prompts.write_text("\n".join(SUMS) + "\n")
    out = tmp_path / "grpo"
    args = ["rlhf", "--algo", "grpo", "--policy", str(tiny_policy("arithmetic")), "--reward", "arithmetic",
            "--prompts", str(prompts), "--out", str(out), "--rollouts", "30", "--batch-size", "32",
            "--group", "8", "--minibatch-size", "16", "--ppo-epochs", "1", "--max-new-tokens", "4",
            "--beta", "0.02", "--lr", "2e-3", "--seed", "0", "--precision", "fp32", "--device", "cpu",
            "--no-progress", "--json"]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["algo"] == "grpo" and r["rollouts"] == 30 and r["value_init"] is None
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    scores = [x["score"] for x in rows[::2]]  # two minibatches per rollout
    assert sum(scores[-10:]) / 10 > sum(scores[:5]) / 5 + 0.15  # about 0.07 -> 0.45
    assert all(x["kl"] < 5 for x in rows) and all("kl_loss" in x for x in rows)
    assert [x["ratio_dev"] == 0.0 for x in rows[:4]] == [True, False, True, False]
    assert not Path(out / "value.safetensors").exists()
