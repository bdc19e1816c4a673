"""In-context learning tasks: labelled examples to draw demonstrations from (the pool), examples to
ask (the test set), the label set when answers come from a closed set, and how to phrase them.

Built in (:func:`get_task`):

- ``sentiment`` (= ``sentiment-movies``), ``sentiment-amazon``, ``sentiment-nyt``,
  ``sentiment-tweets``: the sentences people rated in the VADER study
  (:mod:`lmlab.data.labelled`), labels ``negative`` / ``positive``; demonstrations come from the
  train split, questions from the test split.
- ``first-letter``, ``last-letter``: a word of a corpus (``--corpus``, default Shakespeare) and
  its first or last letter (26 labels); ``repeat-word``: the word itself (open answers, scored
  by generation). Copying from the context is what small models learn first (induction heads).
  The corpus's distinct lowercase words of 3-12 letters, by a seeded shuffle, half demonstration
  pool, half questions.
- ``kv-lookup``: a random mapping of four letters to digits written in the input
  (``"b=4 k=1 q=7 x=2; k"``), the answer the digit of the asked key (10 labels): only the prompt
  holds the answer.
- ``linear-regression``: three points of a random line ``y = a x + b`` (``a`` 1-5, ``b`` 0-9)
  and a new ``x`` (``"f(1)=7 f(3)=13 f(4)=?"``), the answer ``f(x)`` (open answers).
- a ``.jsonl`` file of ``{"input": ..., "label": ...}`` records (your own task): every record is
  a question and the others are its demonstration pool (leave-one-out); the labels found are
  the label set. Records may carry ``"split": "train"`` (pool only) or ``"test"`` (questions only).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.prompting.templates import Demo, Template

SENTIMENT_TASKS = {"sentiment": "sentiment-movies", "sentiment-movies": "sentiment-movies",
                   "sentiment-amazon": "sentiment-amazon", "sentiment-nyt": "sentiment-nyt",
                   "sentiment-tweets": "sentiment-tweets"}
WORD_TASKS = ("first-letter", "last-letter", "repeat-word")
SYNTHETIC_TASKS = ("kv-lookup", "linear-regression")
BUILTIN_TASKS = (*SENTIMENT_TASKS, *WORD_TASKS, *SYNTHETIC_TASKS)
LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
SYNTHETIC_POOL = 2000  # generated demonstrations; questions are generated apart from them
_WORD = re.compile(r"[a-z]{3,12}")


@dataclass
class Task:
    """A task's demonstration pool, its questions, its label set (None: open answers, scored by
    generation only), and its phrasing. ``leave_one_out``: a question may be in the pool and is then
    never its own demonstration."""

    name: str
    pool: list[Demo]
    test: list[Demo]
    labels: list[str] | None
    instruction: str
    input_prefix: str = "Input: "
    output_prefix: str = "Output:"
    leave_one_out: bool = False

    def template(self, fmt: str = "plain") -> Template:
        """Return the task's template in format ``fmt`` (plain, instruction or chat)."""
        return Template(fmt, self.instruction, self.input_prefix, self.output_prefix)

    def questions(self, samples: int | None, seed: int) -> list[Demo]:
        """Return ``samples`` questions drawn from the test set by a seeded generator (all when None
        or when there are fewer)."""
        if samples is None or samples >= len(self.test):
            return list(self.test)
        if samples < 1:
            raise LmlabError(f"--samples must be at least 1, got {samples}")
        return random.Random(f"questions:{seed}").sample(self.test, samples)


def get_task(spec: str, corpus: str = "shakespeare", seed: int = 0) -> Task:
    """Return the task ``spec``: a built-in name (see the module docstring) or a ``.jsonl`` file.
    ``corpus`` is where the word tasks take their words; ``seed`` fixes generated data and splits."""
    if spec in SENTIMENT_TASKS:
        return sentiment_task(SENTIMENT_TASKS[spec])
    if spec in WORD_TASKS:
        return word_task(spec, corpus_words(corpus), seed)
    if spec == "kv-lookup":
        return kv_lookup_task(seed)
    if spec == "linear-regression":
        return linear_regression_task(seed)
    path = Path(spec).expanduser()
    if path.is_file():
        return jsonl_task(path)
    raise LmlabError(f"unknown task {spec!r}: not a built-in ({', '.join(BUILTIN_TASKS)}) and not an "
                     "existing .jsonl file of {\"input\": ..., \"label\": ...} records")


def sentiment_task(corpus: str) -> Task:
    """Return the binary sentiment task of the VADER set ``corpus`` (e.g. ``sentiment-movies``)."""
    from lmlab.data.labelled import get_labelled

    data = get_labelled(corpus)

    def demos(split: str) -> list[Demo]:
        return [Demo(e.text, data.label_names[e.label]) for e in data.examples(split)
                if e.label is not None]

    return Task(corpus, demos("train"), demos("test"), list(data.label_names),
                "Classify the sentiment of each review as positive or negative.",
                "Review: ", "Sentiment:")


def corpus_words(spec: str, limit: int = 200_000) -> list[str]:
    """Return the distinct lowercase words of 3-12 letters in the first ``limit`` words of corpus
    ``spec`` (:func:`lmlab.data.corpora.get_corpus`), in order of first appearance."""
    from lmlab.data.corpora import get_corpus

    seen: dict[str, None] = {}
    count = 0
    for doc in get_corpus(spec).documents("train"):
        for token in doc.split():
            count += 1
            w = token.strip(".,;:!?'\"()[]-").lower()
            if _WORD.fullmatch(w):
                seen.setdefault(w, None)
            if count >= limit:
                return list(seen)
    return list(seen)


def word_task(name: str, words: list[str], seed: int) -> Task:
    """Return the word task ``name`` (first-letter, last-letter, repeat-word) over ``words``."""
    if len(words) < 4:
        raise LmlabError(f"the corpus has {len(words)} distinct words of 3-12 letters; the word tasks "
                         "need at least 4: give a larger --corpus")
    words = sorted(words)
    random.Random(f"words:{seed}").shuffle(words)
    half = len(words) // 2
    answer = {"first-letter": lambda w: w[0], "last-letter": lambda w: w[-1],
              "repeat-word": lambda w: w}[name]
    pool = [Demo(w, answer(w)) for w in words[:half]]
    test = [Demo(w, answer(w)) for w in words[half:]]
    if name == "repeat-word":
        return Task(name, pool, test, None, "Repeat the word.", "Word: ", "Repeat:")
    which = "first" if name == "first-letter" else "last"
    return Task(name, pool, test, list(LETTERS), f"Give the {which} letter of each word.", "Word: ",
                "Letter:")


def kv_lookup_example(rng: random.Random, n_keys: int = 4) -> Demo:
    """Return one key-value lookup: ``n_keys`` distinct letters mapped to random digits, written
    ``"b=4 k=1 q=7 x=2; k"``, and the asked key's digit."""
    keys = sorted(rng.sample(LETTERS, n_keys))
    values = [rng.choice(DIGITS) for _ in keys]
    ask = rng.randrange(n_keys)
    pairs = " ".join(f"{k}={v}" for k, v in zip(keys, values))
    return Demo(f"{pairs}; {keys[ask]}", values[ask])


def kv_lookup_task(seed: int, test_size: int = 500) -> Task:
    """Return the key-value lookup task: generated pool and questions (seeded, distinct streams)."""
    pool_rng, test_rng = random.Random(f"kv-pool:{seed}"), random.Random(f"kv-test:{seed}")
    return Task("kv-lookup", [kv_lookup_example(pool_rng) for _ in range(SYNTHETIC_POOL)],
                [kv_lookup_example(test_rng) for _ in range(test_size)], list(DIGITS),
                "Give the digit the last letter is mapped to.")


def linear_regression_example(rng: random.Random, n_points: int = 3) -> Demo:
    """Return one line-fitting question: ``n_points`` points of ``y = a x + b`` (``a`` 1-5, ``b``
    0-9, ``x`` distinct in 0-9) written ``"f(1)=7 f(3)=13 f(4)=?"`` and the answer ``f(x)``."""
    a, b = rng.randint(1, 5), rng.randint(0, 9)
    xs = rng.sample(range(10), n_points + 1)
    shown = " ".join(f"f({x})={a * x + b}" for x in xs[:-1])
    return Demo(f"{shown} f({xs[-1]})=?", str(a * xs[-1] + b))


def linear_regression_task(seed: int, test_size: int = 500) -> Task:
    """Return the in-prompt linear regression task (open answers: score it by generation)."""
    pool_rng, test_rng = random.Random(f"lr-pool:{seed}"), random.Random(f"lr-test:{seed}")
    return Task("linear-regression", [linear_regression_example(pool_rng) for _ in range(SYNTHETIC_POOL)],
                [linear_regression_example(test_rng) for _ in range(test_size)], None,
                "Each line gives points of a line; give its value at the last x.")


def jsonl_task(path: Path) -> Task:
    """Return the task in ``path``: one ``{"input", "label"[, "split"]}`` object per line."""
    pool: list[Demo] = []
    test: list[Demo] = []
    both: list[Demo] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise LmlabError(f"{path}:{lineno} is not JSON ({e.msg}); write one "
                                 "{\"input\": ..., \"label\": ...} object per line") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("input"), str) or "label" not in rec:
                raise LmlabError(f"{path}:{lineno}: expected {{\"input\": a string, \"label\": ...}}, "
                                 f"got {line.strip()[:80]}")
            demo = Demo(rec["input"], str(rec["label"]))
            split = rec.get("split")
            if split not in (None, "train", "test"):
                raise LmlabError(f"{path}:{lineno}: split {split!r} is not 'train' or 'test'; leave it "
                                 "out to use the record both ways")
            {None: both, "train": pool, "test": test}[split].append(demo)
    if not pool + test + both:
        raise LmlabError(f"{path} has no records; write {{\"input\": ..., \"label\": ...}} objects, one "
                         "a line")
    if not test + both:
        raise LmlabError(f"{path}: every record has split 'train', so there is nothing to ask; mark some "
                         "'test' or leave the split out")
    labels = sorted({d.label for d in pool + test + both})
    return Task(path.stem, pool + both, test + both, labels, "Give the label of each input.",
                leave_one_out=bool(both))


__all__ = ["BUILTIN_TASKS", "SENTIMENT_TASKS", "SYNTHETIC_TASKS", "Task", "WORD_TASKS", "corpus_words",
           "get_task", "jsonl_task", "kv_lookup_example", "kv_lookup_task", "linear_regression_example",
           "linear_regression_task", "sentiment_task", "word_task"]
