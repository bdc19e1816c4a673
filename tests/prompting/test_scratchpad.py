"""Arithmetic with and without a scratchpad: exact formats, answer extraction, majority vote, the split."""

from __future__ import annotations

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.nn.losses import IGNORE_INDEX
from lmlab.prompting.scratchpad import (
    CHARS,
    NEWLINE,
    PackedProblems,
    Problem,
    decode_ids,
    encode,
    extract_answer,
    held_out,
    longest_line,
    majority_vote,
    n_keys,
    parse_digits,
    scratchpad,
)


@pytest.mark.parametrize("op, a, b, line", [
    ("add", 123, 45, "123+45=[3+5+0=08,2+4+0=06,1+0+0=01]168\n"),
    ("add", 5, 123, "5+123=[5+3+0=08,0+2+0=02,0+1+0=01]128\n"),
    ("add", 99, 99, "99+99=[9+9+0=18,9+9+1=19]198\n"),
    ("add", 0, 0, "0+0=[0+0+0=00]0\n"),
    ("mul", 123, 45, "123*45=[321*54:516+0294=5355]5535\n"),
    ("mul", 123, 456, "123*456=[321*654:837+0516=8886+00294=88065]56088\n"),
    ("mul", 7, 8, "7*8=[7*8:65]56\n"),
    ("mul", 10, 10, "10*10=[01*01:0+001=001]100\n"),
    ("mul", 25, 0, "25*0=[52*0:0]0\n"),
])
def test_scratchpad_lines_are_exactly_the_hand_written_ones(op: str, a: int, b: int, line: str) -> None:
    p = Problem(op, a, b)
    assert p.prompt + p.target(scratch=True) == line
    assert p.prompt + p.target(scratch=False) == line.split("=")[0] + "=" + p.answer + "\n"
    assert scratchpad(op, a, b) == line[len(p.prompt) : line.rindex("]") + 1]
    assert int(p.answer) == (a + b if op == "add" else a * b)
    assert decode_ids(encode(line)) == line and encode(line)[-1] == NEWLINE


def test_every_scratchpad_step_is_true_arithmetic() -> None:
    import random

    rng = random.Random(0)
    for _ in range(200):
        a, b = rng.randint(0, 10**5), rng.randint(0, 10**5)
        for step in scratchpad("add", a, b)[1:-1].split(","):
            lhs, rhs = step.split("=")
            assert sum(map(int, lhs.split("+"))) == int(rhs)
        body = scratchpad("mul", a, b)[1:-1]
        head, chain = body.split(":")
        assert head == f"{str(a)[::-1]}*{str(b)[::-1]}"
        # P0+P1=S1+P2=S2...: every number units first; the last running sum is the product
        numbers = [int(x[::-1]) for x in chain.replace("=", "+").split("+")]
        partials = [numbers[0]] + numbers[1::2]
        assert partials == [a * int(d) * 10**j for j, d in enumerate(str(b)[::-1])]
        assert numbers[2::2] == [sum(partials[: j + 1]) for j in range(1, len(partials))]
        assert numbers[-1] == a * b
    with pytest.raises(LmlabError, match="negative"):
        scratchpad("add", -1, 2)
    with pytest.raises(LmlabError, match="unknown operation"):
        scratchpad("sub", 1, 2)


@pytest.mark.parametrize("text, scratch, answer", [
    ("168\n", False, "168"),
    ("168\nanything after", False, "168"),
    ("168", False, None),  # cut off before the newline
    ("\n", False, None),
    ("1+8\n", False, None),
    ("[3+5+0=08,2+4+0=06,1+0+0=01]168\n", True, "168"),
    ("[3+5+0=08]]9\n", True, "9"),  # the digits after the last ]
    ("[3+5+0=08,2+4+0=06\n", True, None),  # no ]
    ("[3+5+0=08]\n", True, None),
    ("[3+5+0=08]168", True, None),
    ("168\n", True, None),  # a scratchpad model that skipped its scratchpad stated no answer
])
def test_extract_answer(text: str, scratch: bool, answer: str | None) -> None:
    assert extract_answer(text, scratch) == answer


@pytest.mark.parametrize("answers, winner", [
    (["5", "5", "6"], "5"),
    (["6", "5", "5"], "5"),
    (["6", "5", "5", "6"], "6"),  # tie: the answer sampled first
    (["5", "6", "6", "5"], "5"),
    ([None, None, "7"], "7"),  # chains without an answer do not vote
    ([None, "8", None, "9", "9"], "9"),
    ([None, None], None),
    ([], None),
])
def test_majority_vote_and_ties(answers: list, winner: str | None) -> None:
    assert majority_vote(answers) == winner


@pytest.mark.parametrize("spec, expected", [("1-4", (1, 4)), ("3", (3, 3)), (" 2-2 ", (2, 2))])
def test_parse_digits(spec: str, expected: tuple[int, int]) -> None:
    assert parse_digits(spec, "--train-digits") == expected


@pytest.mark.parametrize("spec", ["4-1", "0-3", "a-b", "1-", "", "1-99", "-3"])
def test_parse_digits_refuses_bad_ranges_in_one_line(spec: str) -> None:
    with pytest.raises(LmlabError, match="--test-digits") as e:
        parse_digits(spec, "--test-digits")
    assert "\n" not in str(e.value)


def test_held_out_is_deterministic_distinct_and_capped() -> None:
    tests = held_out("add", (1, 3), 40, seed=2)
    assert sorted(tests) == [1, 2, 3]
    assert len(tests[1]) == n_keys(1) // 4 == 13  # a quarter of the 55 one-digit problems
    assert len(tests[2]) == len(tests[3]) == 40
    for n, ps in tests.items():
        assert all(p.digits == n and p.op == "add" for p in ps)
        assert len({p.key() for p in ps}) == len(ps)
    assert held_out("add", (1, 3), 40, seed=2) == tests
    assert held_out("add", (3, 5), 40, seed=2)[3] == tests[3]  # a digit count's problems ignore the range
    assert held_out("add", (2, 2), 10, seed=2)[2] == tests[2][:10]  # fewer: a prefix of more
    assert held_out("add", (2, 2), 40, seed=3)[2] != tests[2]
    assert held_out("mul", (2, 2), 40, seed=2)[2][0].op == "mul"
    with pytest.raises(LmlabError, match="--test-per-digits"):
        held_out("add", (1, 2), 0)


def _problems_in(row: torch.Tensor) -> list[Problem]:
    lines = decode_ids(row.tolist()).split("\n")
    out = []
    for line in lines:
        if "=" not in line:
            continue
        lhs = line.split("=")[0]
        op = "add" if "+" in lhs else "mul"
        a, b = lhs.split(OPS_SYMBOL[op])
        out.append(Problem(op, int(a), int(b)))
    return out


OPS_SYMBOL = {"add": "+", "mul": "*"}


@pytest.mark.parametrize("op, scratch", [("add", True), ("add", False), ("mul", True)])
def test_training_batches_skip_held_out_problems_and_score_only_targets(op: str, scratch: bool) -> None:
    tests = held_out(op, (1, 4), 30, seed=0)
    exclude = {p.key() for ps in tests.values() for p in ps}
    block = 64
    batches = PackedProblems(op, (1, 2), scratch, block, 16, exclude, seed=0)
    seen = []
    for _ in range(20):
        b = batches.next()
        ids, labels = b["input_ids"], b["labels"]
        assert ids.shape == labels.shape == (16, block)
        full = torch.cat([ids, labels[:, -1:].clamp(min=0)], 1)
        for r in range(16):
            problems = _problems_in(full[r])
            seen += problems
            # the scored labels are exactly the targets of the packed problems, in order
            scored = "".join(CHARS[t] for t in labels[r].tolist() if t != IGNORE_INDEX)
            assert scored == "".join(p.target(scratch) for p in problems)
            keep = labels[r, :-1] != IGNORE_INDEX  # labels are the inputs shifted left by one
            assert torch.equal(labels[r, :-1][keep], ids[r, 1:][keep])
    assert len(seen) == batches.problems_seen > 300
    assert not {p.key() for p in seen} & exclude  # no held-out problem (nor its mirror) is trained on
    assert {p.digits for p in seen} == {1, 2}  # the trained lengths, and only those
    assert max(tests) > max(p.digits for p in seen)  # held-out lengths exceed the trained ones


def test_batches_resume_at_their_position_and_refuse_lines_that_do_not_fit() -> None:
    a = PackedProblems("add", (1, 3), True, 64, 4, set(), seed=5)
    a.next()
    state = a.state_dict()
    want = a.next()
    b = PackedProblems("add", (1, 3), True, 64, 4, set(), seed=5)
    b.load_state_dict(state)
    got = b.next()
    assert torch.equal(want["input_ids"], got["input_ids"]) and torch.equal(want["labels"], got["labels"])
    assert b.state_dict() == a.state_dict()
    assert longest_line("add", 4, True) == len("9999+9999=[9+9+0=18,9+9+1=19,9+9+1=19,9+9+1=19]19998\n")
    with pytest.raises(LmlabError, match="--block-size"):
        PackedProblems("add", (1, 4), True, 40, 4, set())
