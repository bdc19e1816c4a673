"""Verifiable rewards: a program checks the answer, no reward model needed (GRPO's setting,
Shao et al. 2024).

``arithmetic``: the prompt holds a sum, difference or product of two integers (its last one
counts: ``"12+7="``, ``"What is 3 * 4?"``; a conversation is read as its rendered text); the
reward is 1.0 when the response's first integer is the result, else 0.0. :func:`arithmetic_prompts`
makes such prompts from a seed, and the prompt source ``arithmetic:N`` names N of them. The
reward is registered as ``arithmetic`` in :data:`lmlab.align.reward.VERIFIABLE`, so
``load_scorer("arithmetic")`` returns it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch

from lmlab.errors import LmlabError

ARITHMETIC = "arithmetic"
_EXPRESSION = re.compile(r"(-?\d+)\s*([+\-*x×])\s*(-?\d+)")
_INTEGER = re.compile(r"-?\d+")
_OPS: dict[str, Callable[[int, int], int]] = {"+": lambda a, b: a + b, "-": lambda a, b: a - b,
                                               "*": lambda a, b: a * b, "x": lambda a, b: a * b,
                                               "×": lambda a, b: a * b}


def arithmetic_answer(prompt: str) -> int | None:
    """Return the result of the last ``a OP b`` (OP one of + - * x ×) in ``prompt``, or None."""
    found = _EXPRESSION.findall(prompt)
    if not found:
        return None
    a, op, b = found[-1]
    return _OPS[op](int(a), int(b))


def first_integer(text: str) -> int | None:
    """Return the first integer written in ``text``, or None."""
    m = _INTEGER.search(text)
    return int(m.group()) if m else None


def arithmetic_prompts(n: int, seed: int = 0, max_operand: int = 9, ops: str = "+") -> list[str]:
    """Return ``n`` prompts ``"a+b="`` (operators drawn from ``ops``, operands 0..``max_operand``),
    the same for the same seed."""
    if n < 1 or max_operand < 1 or not ops or any(op not in "+-*" for op in ops):
        raise LmlabError(f"arithmetic prompts need n >= 1, max_operand >= 1 and ops from '+-*' (got {n}, "
                         f"{max_operand}, {ops!r})")
    rng = random.Random(seed)
    return [f"{rng.randint(0, max_operand)}{rng.choice(ops)}{rng.randint(0, max_operand)}=" for _ in range(n)]


class ArithmeticReward:
    """The ``arithmetic`` verifiable reward (see the module docstring)."""

    name = ARITHMETIC

    def score_pairs(self, prompts: Sequence[Any], responses: Sequence[str]) -> torch.Tensor:
        """Return ``(B,)`` float32: 1.0 where the response's first integer answers its prompt (text or
        chat messages), else 0.0. Raises LmlabError naming a prompt with no arithmetic in it."""
        from lmlab.align.preferences import prompt_text

        if len(prompts) != len(responses):
            raise LmlabError(f"{len(prompts)} prompts but {len(responses)} responses to score")
        out = []
        for i, (p, r) in enumerate(zip(map(prompt_text, prompts), responses)):
            answer = arithmetic_answer(p)
            if answer is None:
                raise LmlabError(f"prompt {i} ({p[:40]!r}) holds no 'a + b', 'a - b' or 'a * b' for the "
                                 "arithmetic reward to check; use --prompts arithmetic:N")
            out.append(1.0 if first_integer(r) == answer else 0.0)
        return torch.tensor(out, dtype=torch.float32)


def verifiable_prompts(spec: str, seed: int = 0) -> list[str] | None:
    """Return the prompts ``spec`` names when it is ``arithmetic:N`` (N prompts of seed ``seed``),
    else None (a file or another source)."""
    if not spec.startswith(ARITHMETIC + ":"):
        return None
    count = spec[len(ARITHMETIC) + 1:]
    if not count.isdigit() or int(count) < 1:
        raise LmlabError(f"--prompts {spec!r}: give the number of prompts, e.g. {ARITHMETIC}:500")
    return arithmetic_prompts(int(count), seed)
