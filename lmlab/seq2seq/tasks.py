"""Built-in synthetic translation tasks with character vocabularies and disjoint train/test sets.

``reverse``   "abcd"          -> "dcba"        (lengths: symbols a-z per input)
``sort``      "dbca"          -> "abcd"        (lengths: symbols a-z per input)
``addition``  "123+45"        -> "168"         (lengths: digits per operand)
``date``      "March 3, 98"   -> "1998-03-03"  (lengths: characters per input)

Dates run from 1950-01-01 to 2049-12-31, so a two-digit year is unambiguous: 50-99
are 19xx, 00-49 are 20xx. Numeric dates put the day first ("03/04/1998" is 3 April).
Splits are drawn from a seed: the test set first, then a training set that never
repeats a test input, so the test set depends only on the task, seed, lengths and
test size.
"""

from __future__ import annotations

import calendar
import datetime
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

from lmlab.errors import LmlabError

SPECIALS = ("<pad>", "<s>", "</s>")
PAD, BOS, EOS = 0, 1, 2

Pair = tuple[str, str]


@dataclass
class Vocab:
    """A character vocabulary: ``<pad>``, ``<s>``, ``</s>`` (ids 0, 1, 2), then one id per character."""

    tokens: list[str]
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if tuple(self.tokens[:3]) != SPECIALS or len(set(self.tokens)) != len(self.tokens):
            raise LmlabError("vocabulary must start with <pad>, <s>, </s> and list each character once; "
                             "retrain the run to rebuild vocab.json")
        self._index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def from_chars(cls, chars: str) -> Vocab:
        """Return the vocabulary of the specials followed by the sorted distinct ``chars``."""
        return cls([*SPECIALS, *sorted(set(chars))])

    @property
    def chars(self) -> str:
        """The characters (no specials), in id order."""
        return "".join(self.tokens[3:])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, what: str = "input") -> list[int]:
        """Return the ids of the characters of ``text``; raise LmlabError naming any unknown character."""
        ids = []
        for pos, ch in enumerate(text):
            if ch not in self._index or self._index[ch] < len(SPECIALS):
                raise LmlabError(f"the {what} {text!r} has the character {ch!r} (position {pos}), which is "
                                 f"not in the vocabulary; use only these characters: {self.chars!r}")
            ids.append(self._index[ch])
        return ids

    def decode(self, ids: list[int]) -> str:
        """Return the text of ``ids``, stopping at ``</s>`` and skipping the other specials."""
        out = []
        for i in ids:
            if i == EOS:
                break
            if i >= len(SPECIALS):
                out.append(self.tokens[i])
        return "".join(out)


@dataclass(frozen=True)
class Task:
    """A synthetic task: its alphabets, what ``--min-len/--max-len`` count and their range, a sampler."""

    name: str
    description: str
    src_chars: str
    tgt_chars: str
    length_unit: str
    default_lengths: tuple[int, int]
    length_limits: tuple[int, int]
    sample: Callable[[random.Random, int, int], Pair]  # (rng, min_len, max_len) -> (source, target)


@dataclass(frozen=True)
class TaskSpec:
    """Everything that determines a task's data: name, seed, lengths and split sizes."""

    task: str
    seed: int = 0
    min_len: int | None = None
    max_len: int | None = None
    train_size: int = 10000
    test_size: int = 500


@dataclass
class Splits:
    """The generated data of a :class:`TaskSpec`: train and test (source, target) pairs, disjoint sources."""

    task: Task
    min_len: int
    max_len: int
    train: list[Pair]
    test: list[Pair]


LETTERS = string.ascii_lowercase
DIGITS = string.digits


def _sample_reverse(rng: random.Random, lo: int, hi: int) -> Pair:
    s = "".join(rng.choices(LETTERS, k=rng.randint(lo, hi)))
    return s, s[::-1]


def _sample_sort(rng: random.Random, lo: int, hi: int) -> Pair:
    s = "".join(rng.choices(LETTERS, k=rng.randint(lo, hi)))
    return s, "".join(sorted(s))


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(0, 9) if digits == 1 else rng.randint(10 ** (digits - 1), 10**digits - 1)


def _sample_addition(rng: random.Random, lo: int, hi: int) -> Pair:
    a, b = _operand(rng, rng.randint(lo, hi)), _operand(rng, rng.randint(lo, hi))
    return f"{a}+{b}", str(a + b)


_FIRST_DAY = datetime.date(1950, 1, 1)
_N_DAYS = (datetime.date(2049, 12, 31) - _FIRST_DAY).days + 1
_MONTHS = list(calendar.month_name)[1:]
_DAY_NAMES = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]

# Each format renders a date; together they cover word, abbreviated, numeric and 2-digit-year styles.
_DATE_FORMATS: list[Callable[[datetime.date], str]] = [
    lambda d: f"{d.day} {_MONTHS[d.month - 1]} {d.year}",  # 3 March 1998
    lambda d: f"{_MONTHS[d.month - 1]} {d.day}, {d.year}",  # March 3, 1998
    lambda d: f"{_MONTHS[d.month - 1]} {d.day}, {d.year % 100:02d}",  # March 3, 98
    lambda d: f"{d.day} {_MONTHS[d.month - 1][:3]} {d.year}",  # 3 Mar 1998
    lambda d: f"{d.day:02d}/{d.month:02d}/{d.year}",  # 03/03/1998
    lambda d: f"{d.day:02d}.{d.month:02d}.{d.year % 100:02d}",  # 03.03.98
    lambda d: f"{_DAY_NAMES[d.weekday()]}, {d.day} {_MONTHS[d.month - 1][:3]} {d.year}",  # Tue, 3 Mar 1998
    lambda d: f"{_MONTHS[d.month - 1].lower()} {d.day} {d.year}",  # march 3 1998
    lambda d: f"{d.day} {_MONTHS[d.month - 1][:3].upper()} {d.year % 100:02d}",  # 3 MAR 98
]


def _date_chars() -> str:
    words = _MONTHS + [m.lower() for m in _MONTHS] + [m[:3].upper() for m in _MONTHS] + _DAY_NAMES
    return "".join(sorted(set("".join(words)) | set(DIGITS) | set(" ,./")))


@cache
def _date_length_range() -> tuple[int, int]:
    """The shortest and longest rendering of any date (a non-leap and a leap year cover all cases)."""
    lengths = set()
    for year in (1998, 2000):
        day = datetime.date(year, 1, 1)
        while day.year == year:
            lengths.update(len(f(day)) for f in _DATE_FORMATS)
            day += datetime.timedelta(days=1)
    return min(lengths), max(lengths)


def _sample_date(rng: random.Random, lo: int, hi: int) -> Pair:
    # Rejection keeps the distribution uniform over (date, format) within the length range.
    while True:
        day = _FIRST_DAY + datetime.timedelta(days=rng.randrange(_N_DAYS))
        src = rng.choice(_DATE_FORMATS)(day)
        if lo <= len(src) <= hi:
            return src, day.isoformat()


TASKS: dict[str, Task] = {
    "reverse": Task("reverse", "reverse a string of letters: abcd -> dcba", LETTERS, LETTERS,
                    "letters", (3, 10), (1, 64), _sample_reverse),
    "sort": Task("sort", "sort the letters of a string: dbca -> abcd", LETTERS, LETTERS,
                 "letters", (3, 10), (1, 64), _sample_sort),
    "addition": Task("addition", "add two decimal numbers: 123+45 -> 168", DIGITS + "+", DIGITS,
                     "digits per operand", (1, 4), (1, 18), _sample_addition),
    "date": Task("date", "normalise a written date to ISO: March 3, 98 -> 1998-03-03", _date_chars(),
                 DIGITS + "-", "characters per input", _date_length_range(), _date_length_range(),
                 _sample_date),
}


def get_task(name: str) -> Task:
    """Return the built-in task called ``name``; raise LmlabError listing the tasks if unknown."""
    if name not in TASKS:
        raise LmlabError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


def resolve_lengths(task: Task, min_len: int | None, max_len: int | None) -> tuple[int, int]:
    """Return the (min, max) length for ``task``, defaults filled in; raise LmlabError when out of range."""
    lo = task.default_lengths[0] if min_len is None else min_len
    hi = task.default_lengths[1] if max_len is None else max_len
    a, b = task.length_limits
    for flag, value in (("--min-len", lo), ("--max-len", hi)):
        if not a <= value <= b:
            raise LmlabError(f"{flag} {value} is out of range for the {task.name} task (lengths count "
                             f"{task.length_unit}); use a value from {a} to {b}")
    if lo > hi:
        raise LmlabError(f"--min-len {lo} is greater than --max-len {hi}; make --min-len <= --max-len")
    return lo, hi


def _draw(rng: random.Random, task: Task, lo: int, hi: int, n: int, exclude: set[str]) -> list[Pair]:
    """Draw ``n`` pairs with distinct sources not in ``exclude`` (which gains the drawn sources)."""
    pairs: list[Pair] = []
    attempts = 0
    max_attempts = 50 * n + 10000
    while len(pairs) < n:
        if attempts >= max_attempts:
            raise LmlabError(f"the {task.name} task has too few distinct inputs with {lo}-{hi} "
                             f"{task.length_unit} for the sizes asked (found {len(exclude)}); lower "
                             "--train-size/--test-size or widen --min-len/--max-len")
        attempts += 1
        src, tgt = task.sample(rng, lo, hi)
        if src not in exclude:
            exclude.add(src)
            pairs.append((src, tgt))
    return pairs


def make_splits(spec: TaskSpec) -> Splits:
    """Generate the train and test pairs of ``spec`` deterministically; test sources never occur in train.

    Raises LmlabError for an unknown task, lengths out of range, non-positive sizes,
    or sizes larger than the task has distinct inputs for.
    """
    task = get_task(spec.task)
    lo, hi = resolve_lengths(task, spec.min_len, spec.max_len)
    for flag, value in (("--train-size", spec.train_size), ("--test-size", spec.test_size)):
        if value < 1:
            raise LmlabError(f"{flag} must be at least 1, got {value}")
    rng = random.Random(f"{spec.task}:{spec.seed}:{lo}:{hi}")
    seen: set[str] = set()
    test = _draw(rng, task, lo, hi, spec.test_size, seen)
    train = _draw(rng, task, lo, hi, spec.train_size, seen)
    return Splits(task, lo, hi, train, test)


def task_vocabs(task: Task) -> tuple[Vocab, Vocab]:
    """Return the source and target vocabularies of ``task``."""
    return Vocab.from_chars(task.src_chars), Vocab.from_chars(task.tgt_chars)
