"""Arithmetic made by code, written with or without a scratchpad (Nye et al. 2021).

Problems are ``a + b`` and ``a * b`` where both operands have ``n`` digits (``n = 1``:
0 to 9; ``n >= 2``: no leading zero), ``n`` drawn from a range. Every problem is one line
of characters; the prompt is the problem up to ``=``, the target everything after it,
ending with a newline. Two ways to write the target:

* direct: the answer alone::

      123+45=168
      123*45=5535

* scratchpad: the intermediate steps between ``[`` and ``]``, then the answer::

      123+45=[3+5+0=08,2+4+0=06,1+0+0=01]168
      123*45=[321*54:516+0294=5355]5535

  Addition: one step per column, units first: ``x+y+c=ks`` reads "digit x of the first
  operand plus digit y of the second plus the carry c in equals k s", ``k`` the carry out
  (the next step's ``c``) and ``s`` the answer's digit in that column (a missing digit of a
  shorter operand is 0). Every step has the same width, so a carry is copied from a fixed
  distance back; the answer after ``]`` is the ``s`` digits read back from the last step,
  led by the final carry when it is 1.

  Multiplication: the operands reversed (units first, ``321*54``), then the partial products
  ``a * b_j`` of each digit of ``b`` shifted by ``j`` places, and their running sums:
  ``P0+P1=S1+P2=S2 ...``, every number written units first (Lee et al. 2023, "Teaching
  arithmetic to small transformers": written this way each digit depends on digits at the
  same place and a carry the digit before it determines). ``123*45``: ``123*5 = 615`` is
  ``516``, ``123*40 = 4920`` is ``0294``, their sum ``5535`` is ``5355``; then the answer in
  the usual order. With one-digit ``b`` there is no sum: ``7*8=[7*8:65]56``.

The answer is extracted (:func:`extract_answer`) as the digits after the last ``]`` (the
scratchpad format) or before the newline (direct); an unfinished line has none.

The split is by problem: for each held-out digit count a seeded sample of problems is the
test set (:func:`held_out`), and training problems (:class:`PackedProblems`, drawn afresh
per batch from a seed) skip every test problem and its mirror image (``b op a``), so no
test problem is ever trained on. Held-out digit counts may exceed the trained ones, which
measures length generalisation.

This generator is separate from :mod:`lmlab.scaling.emergence`'s (fixed-width zero-padded
addition lines of one digit count, all of one length) and :mod:`lmlab.data.instructions`'
(chat questions "What is A + B?"): it writes variable lengths, both operations, and the
scratchpad.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from lmlab.errors import LmlabError

CHARS = "0123456789+*=[],:\n"
VOCAB_SIZE = len(CHARS)
NEWLINE = CHARS.index("\n")
_INDEX = {c: i for i, c in enumerate(CHARS)}
OPS = {"add": "+", "mul": "*"}
MAX_DIGITS = 30  # more would make lines longer than any model here reads


# ---------------------------------------------------------------- problems


def parse_digits(spec: str, flag: str) -> tuple[int, int]:
    """Return ``(lo, hi)`` from a digit-count range ``"1-4"`` or a single count ``"3"``.

    Raises LmlabError naming ``flag`` when the range is malformed, empty, below 1 or above
    :data:`MAX_DIGITS`.
    """
    text = str(spec).strip()
    lo_s, sep, hi_s = text.partition("-")
    try:
        lo, hi = int(lo_s), int(hi_s if sep else lo_s)
    except ValueError:
        raise LmlabError(f"{flag} {spec!r} is not a digit count or range; write e.g. {flag} 1-4 or "
                         f"{flag} 3") from None
    if not 1 <= lo <= hi <= MAX_DIGITS:
        raise LmlabError(f"{flag} {spec!r} must be a range LO-HI with 1 <= LO <= HI <= {MAX_DIGITS}; "
                         f"e.g. {flag} 1-4")
    return lo, hi


def check_op(op: str) -> str:
    """Return ``op`` when it is ``add`` or ``mul``; raise LmlabError otherwise."""
    if op not in OPS:
        raise LmlabError(f"unknown operation {op!r}; use add or mul")
    return op


@dataclass(frozen=True)
class Problem:
    """One problem ``a op b``: its operation (``add`` or ``mul``) and operands."""

    op: str
    a: int
    b: int

    @property
    def digits(self) -> int:
        """Digits of the longer operand (the problem's length class)."""
        return max(len(str(self.a)), len(str(self.b)))

    @property
    def answer(self) -> str:
        """The true answer as written: the decimal sum or product."""
        return str(self.a + self.b if self.op == "add" else self.a * self.b)

    @property
    def prompt(self) -> str:
        """The prompt ``"123+45="``."""
        return f"{self.a}{OPS[self.op]}{self.b}="

    def target(self, scratch: bool) -> str:
        """Return what follows the prompt: the scratchpad (when ``scratch``) and answer, then a newline."""
        steps = scratchpad(self.op, self.a, self.b) if scratch else ""
        return steps + self.answer + "\n"

    def key(self) -> tuple[str, int, int]:
        """The problem up to the order of its operands (both operations commute)."""
        return (self.op, min(self.a, self.b), max(self.a, self.b))


def _add_steps(a: int, b: int) -> str:
    xs, ys = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(xs), len(ys))):
        x = int(xs[i]) if i < len(xs) else 0
        y = int(ys[i]) if i < len(ys) else 0
        total = x + y + carry
        steps.append(f"{x}+{y}+{carry}={total // 10}{total % 10}")
        carry = total // 10
    return ",".join(steps)


def _mul_steps(a: int, b: int) -> str:
    rev_b = str(b)[::-1]
    parts = [f"{str(a)[::-1]}*{rev_b}:"]
    total = 0
    for j, d in enumerate(rev_b):
        partial = a * int(d)
        parts.append(("+" if j else "") + "0" * j + str(partial)[::-1])
        total += partial * 10**j
        if j:
            parts.append("=" + str(total)[::-1])
    return "".join(parts)


def scratchpad(op: str, a: int, b: int) -> str:
    """Return the scratchpad of ``a op b`` with its brackets, e.g. ``"[3+5+0=08,2+4+0=06,1+0+0=01]"``
    for 123+45 (the formats are in the module docstring). Raises LmlabError on a negative operand."""
    check_op(op)
    if a < 0 or b < 0:
        raise LmlabError(f"operands must not be negative, got {a} and {b}")
    return "[" + (_add_steps(a, b) if op == "add" else _mul_steps(a, b)) + "]"


def extract_answer(text: str, scratch: bool) -> str | None:
    """Return the answer a generated target states, or None when it states none.

    ``text`` is what followed the prompt. The answer is the digits between the last ``]``
    and the newline (``scratch``) or before the newline (direct); None when the newline is
    missing (the generation was cut off), a scratchpad has no ``]``, or the answer is not
    a decimal number.
    """
    line, ended, _ = text.partition("\n")
    if not ended:
        return None
    if scratch:
        if "]" not in line:
            return None
        line = line.rsplit("]", 1)[1]
    return line if line.isdigit() and line.isascii() else None


def encode(text: str) -> list[int]:
    """Return the token ids of ``text`` (one per character); raise LmlabError on a character outside
    :data:`CHARS`."""
    try:
        return [_INDEX[c] for c in text]
    except KeyError as e:
        raise LmlabError(f"character {e.args[0]!r} is not in the arithmetic vocabulary {CHARS!r}") from None


def decode_ids(ids: list[int]) -> str:
    """Return the text of token ids (each below :data:`VOCAB_SIZE`)."""
    return "".join(CHARS[i] for i in ids)


def n_digit_range(n: int) -> tuple[int, int]:
    """Return the smallest and largest ``n``-digit number (0 and 9 for ``n = 1``)."""
    return (0 if n == 1 else 10 ** (n - 1)), 10**n - 1


def sample_problem(op: str, n: int, rng: random.Random) -> Problem:
    """Return a uniformly drawn problem ``a op b`` with two ``n``-digit operands."""
    lo, hi = n_digit_range(n)
    return Problem(op, rng.randint(lo, hi), rng.randint(lo, hi))


def n_keys(n: int) -> int:
    """Return how many problems with two ``n``-digit operands there are up to operand order."""
    lo, hi = n_digit_range(n)
    size = hi - lo + 1
    return size * (size + 1) // 2


def held_out(op: str, digits: tuple[int, int], per_digits: int, seed: int = 0) -> dict[int, list[Problem]]:
    """Return the test problems of each digit count in ``digits``: ``{n: [Problem, ...]}``.

    ``per_digits`` distinct problems (up to operand order) per digit count, at most a
    quarter of all there are for that count (for one digit: 13 of the 55), drawn by a
    generator seeded with ``op``, ``n`` and ``seed`` alone, so the test problems of a digit
    count do not depend on the range asked. Raises LmlabError when ``per_digits < 1``.
    """
    check_op(op)
    if per_digits < 1:
        raise LmlabError(f"--test-per-digits must be at least 1, got {per_digits}")
    out: dict[int, list[Problem]] = {}
    for n in range(digits[0], digits[1] + 1):
        rng = random.Random(f"cot-test:{op}:{n}:{seed}")
        want = min(per_digits, max(1, n_keys(n) // 4))
        seen: set[tuple[str, int, int]] = set()
        problems = []
        while len(problems) < want:
            p = sample_problem(op, n, rng)
            if p.key() not in seen:
                seen.add(p.key())
                problems.append(p)
        out[n] = problems
    return out


# ---------------------------------------------------------------- training batches


class PackedProblems:
    """Training batches of whole problems packed into rows of ``block_size`` tokens.

    Each row is filled with lines of fresh problems (digit count uniform in ``digits``,
    operands uniform, any problem whose :meth:`Problem.key` is in ``exclude`` skipped)
    until the next one does not fit; the rest is padding. ``labels`` are the inputs
    shifted left by one, and only target tokens (scratchpad, answer, newline) are scored:
    prompt and padding positions are -100. Batch ``k`` comes from a generator seeded with
    ``seed`` and ``k``, so the position to resume from is the batch count. Every batch has
    ``batch_size * block_size`` tokens whatever the format, so equal steps are equal
    compute.
    """

    def __init__(self, op: str, digits: tuple[int, int], scratch: bool, block_size: int, batch_size: int,
                 exclude: set[tuple[str, int, int]], seed: int = 0, device: torch.device | None = None):
        self.op, self.digits, self.scratch = check_op(op), digits, scratch
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.exclude, self.device = exclude, device or torch.device("cpu")
        longest = longest_line(op, digits[1], scratch)
        if longest > block_size + 1:
            raise LmlabError(f"a {digits[1]}-digit {op} line is {longest} tokens, longer than --block-size "
                             f"{block_size} + 1; raise --block-size to at least {longest - 1}")
        if batch_size < 1:
            raise LmlabError(f"--batch-size must be at least 1, got {batch_size}")
        self.batch = 0
        self.problems_seen = 0

    def _fresh(self, rng: random.Random) -> Problem:
        while True:
            p = sample_problem(self.op, rng.randint(*self.digits), rng)
            if p.key() not in self.exclude:
                return p

    def rows(self, k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Return batch ``k``'s ``(input_ids, labels, problems)``: ``(B, block_size)`` tensors and the
        number of problems in it."""
        from lmlab.nn.losses import IGNORE_INDEX

        rng = random.Random(f"cot-train:{self.op}:{self.seed}:{k}")
        width = self.block_size + 1
        ids = torch.full((self.batch_size, width), NEWLINE, dtype=torch.long)
        scored = torch.zeros((self.batch_size, width), dtype=torch.bool)
        count = 0
        pending = self._fresh(rng)
        for r in range(self.batch_size):
            pos = 0
            while True:
                prompt, target = encode(pending.prompt), encode(pending.target(self.scratch))
                if pos + len(prompt) + len(target) > width:
                    break  # it starts the next row: dropping it would favour short problems
                end = pos + len(prompt) + len(target)
                ids[r, pos:end] = torch.tensor(prompt + target)
                scored[r, pos + len(prompt):end] = True
                pos, count = end, count + 1
                pending = self._fresh(rng)
        labels = ids[:, 1:].clone()
        labels[~scored[:, 1:]] = IGNORE_INDEX
        return ids[:, :-1].contiguous(), labels, count

    def next(self) -> dict[str, torch.Tensor]:
        """Return the next batch (``input_ids`` and ``labels`` on the device)."""
        inputs, labels, count = self.rows(self.batch)
        self.batch += 1
        self.problems_seen += count
        return {"input_ids": inputs.to(self.device), "labels": labels.to(self.device)}

    def state_dict(self) -> dict[str, Any]:
        """Return the position: batches and problems drawn so far."""
        return {"batch": self.batch, "problems_seen": self.problems_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a position saved by :meth:`state_dict`."""
        self.batch, self.problems_seen = int(state["batch"]), int(state["problems_seen"])


def longest_line(op: str, n: int, scratch: bool) -> int:
    """Return the tokens of the longest line (prompt and target) with two ``n``-digit operands."""
    top = 10**n - 1
    return len(encode(Problem(op, top, top).prompt + Problem(op, top, top).target(scratch)))


def majority_vote(answers: list[str | None]) -> str | None:
    """Return the most frequent answer among ``answers`` (None entries do not vote), or None when no
    answer is given; a tie goes to the tied answer that occurs first in the list."""
    counts: dict[str, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


__all__ = ["CHARS", "NEWLINE", "OPS", "PackedProblems", "Problem", "VOCAB_SIZE", "check_op", "decode_ids",
           "encode", "extract_answer", "held_out", "longest_line", "majority_vote", "n_digit_range", "n_keys",
           "parse_digits", "sample_problem", "scratchpad"]
