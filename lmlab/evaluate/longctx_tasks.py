"""Synthetic long-context tasks: passkey retrieval and multi-query associative recall (MQAR).

- ``passkey`` (Mohtashami & Jaggi 2023, "Landmark Attention"): a 5-digit key hidden at a
  given depth in repeated filler text ("The grass is green. The sky is blue. ..."), then the
  question "What is the pass key? The pass key is "; the answer is the key. The paper's
  opening instruction is left out: our models are trained on the task, not instructed.
- ``mqar`` (Arora et al. 2023, "Zoology"), written as text: ``n_pairs`` key-value pairs
  (``ab=42``: keys of lowercase letters, values of digits) at a given depth in the filler,
  then ``Recall: `` and ``n_queries`` of the keys, each followed by its value, the answers.

An example is built from pieces encoded one by one and concatenated, so its length in tokens
is exact for any tokenizer. ``length`` counts the tokens the model *reads*: an example holds
``length + 1`` ids, the model reads ``ids[:-1]`` and the last answer token is only predicted,
which is exactly a training window of ``--block-size length``. ``depth`` places the needle
(the key sentence, the pairs) at that fraction of the filler: 0 = the very start, 1 = just
before the question. Each example draws its key(s) from its own generator, seeded by
``(seed, length, depth, index)``, so an example does not depend on which others are asked for.

:func:`task_tokenizer` is the character-level tokenizer the training data uses: digits and
letters are single tokens, so a key is 5 tokens and a value ``value_len``.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.errors import LmlabError

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "What is the pass key? The pass key is "
RECALL = "Recall: "
TASKS = ("passkey", "mqar")


@dataclass
class Example:
    """One task example: ``ids`` (``length + 1`` token ids), the ``[start, end)`` spans of ``ids``
    that are answers (the model must predict each of their tokens), where the needle starts,
    the depth it was asked at, and the example's text (for reading it and for byte counts)."""

    ids: list[int]
    answers: list[tuple[int, int]]
    needle_start: int
    depth: float
    text: str

    @property
    def length(self) -> int:
        """Tokens the model reads (one fewer than ``ids``)."""
        return len(self.ids) - 1


@dataclass
class TaskSpec:
    """Which task, and its settings: ``key_len``/``value_len``/``n_pairs``/``n_queries`` are MQAR's
    (``n_queries`` None = all the pairs, in a random order)."""

    task: str = "passkey"
    n_pairs: int = 8
    n_queries: int | None = None
    key_len: int = 2
    value_len: int = 2

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise LmlabError(f"unknown long-context task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.task == "mqar":
            for name in ("n_pairs", "key_len", "value_len"):
                if getattr(self, name) < 1:
                    raise LmlabError(f"mqar --{name.replace('_', '-')} must be at least 1, "
                                     f"got {getattr(self, name)}")
            if self.n_pairs > 26 ** self.key_len:
                raise LmlabError(f"{self.n_pairs} pairs need distinct keys, but keys of {self.key_len} "
                                 f"letters give only {26 ** self.key_len}; raise --key-len or lower "
                                 "--n-pairs")
            if self.n_queries is not None and not 1 <= self.n_queries <= self.n_pairs:
                raise LmlabError(f"--n-queries must be between 1 and --n-pairs {self.n_pairs}, "
                                 f"got {self.n_queries}")

    def to_dict(self) -> dict[str, Any]:
        """The settings that matter for the task (MQAR's only for mqar)."""
        d = asdict(self)
        return d if self.task == "mqar" else {"task": self.task}


def task_tokenizer() -> Any:
    """Return the character-level tokenizer of the tasks' training data: every character of the
    templates, the digits and the lowercase letters is one token (plus lmlab's special tokens)."""
    from lmlab.data.tokenizers import train_tokenizer

    alphabet = FILLER + NEEDLE + QUESTION + RECALL + "=" + string.digits + string.ascii_lowercase
    return train_tokenizer("char", [alphabet])


@dataclass
class TaskGenerator:
    """Seeded examples of one task for one tokenizer (anything with ``encode(text) -> ids``)."""

    tokenizer: Any
    spec: TaskSpec = field(default_factory=TaskSpec)
    seed: int = 0

    @cached_property
    def _filler(self) -> list[int]:
        return self._encode(FILLER)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def rng(self, length: int, depth: float, index: int, stream: int = 0) -> np.random.Generator:
        """The generator of example ``index`` at ``length`` and ``depth`` (independent of the others);
        ``stream`` keeps evaluation (0), training (1) and validation (2) examples apart."""
        return np.random.default_rng([self.seed, stream, length, round(depth * 1_000_000), index])

    def _parts(self, rng: np.random.Generator) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
        """Return ``(needle pieces, question pieces)``; each piece is ``(text, is_answer)``."""
        if self.spec.task == "passkey":
            key = str(int(rng.integers(10_000, 100_000)))
            return [(NEEDLE.format(key=key), False)], [(QUESTION, False), (key, True)]
        s = self.spec
        letters = np.array(list(string.ascii_lowercase))
        keys: list[str] = []
        while len(keys) < s.n_pairs:  # distinct keys
            k = "".join(rng.choice(letters, size=s.key_len))
            if k not in keys:
                keys.append(k)
        values = ["".join(map(str, rng.integers(0, 10, size=s.value_len))) for _ in keys]
        needle = [(f"{k}={v} ", False) for k, v in zip(keys, values)]
        asked = rng.permutation(s.n_pairs)[: s.n_queries or s.n_pairs]
        question: list[tuple[str, bool]] = [(RECALL, False)]
        for n, i in enumerate(asked):
            question += [(f"{keys[i]}=", False), (values[i], True)]
            if n < len(asked) - 1:
                question.append((" ", False))
        return needle, question

    def min_length(self) -> int:
        """The shortest ``length`` that holds the needle and the question with no filler (the
        longest draw of the task's pieces: keys and values of any digits encode alike with a
        character tokenizer, but may not with a BPE one, so a few draws are measured)."""
        longest = 0
        for i in range(8):
            needle, question = self._parts(self.rng(0, 0.0, i))
            longest = max(longest, sum(len(self._encode(t)) for t, _ in needle + question))
        return longest - 1

    def example(self, length: int, depth: float, index: int = 0, stream: int = 0) -> Example:
        """Return example ``index`` of ``stream`` at ``length`` (tokens read) with the needle at
        ``depth`` in [0, 1] (see :meth:`rng`).

        Raises LmlabError when ``length`` cannot hold the needle and the question.
        """
        if not 0.0 <= depth <= 1.0:
            raise LmlabError(f"depth {depth} is not in [0, 1] (0 = the start of the context, 1 = its end)")
        if length < 1:
            raise LmlabError(f"context lengths must be positive, got {length}")
        needle, question = self._parts(self.rng(length, depth, index, stream))
        needle_ids = [self._encode(t) for t, _ in needle]
        question_ids = [self._encode(t) for t, _ in question]
        fixed = sum(map(len, needle_ids)) + sum(map(len, question_ids))
        n_filler = length + 1 - fixed
        if n_filler < 0:
            raise LmlabError(f"a {self.spec.task} example needs at least {fixed - 1} tokens with this "
                             f"tokenizer (needle and question), {length} asked; use longer --lengths")
        before = round(depth * n_filler)
        reps = -(-n_filler // max(1, len(self._filler))) if n_filler else 0
        filler = (self._filler * reps)[:n_filler]
        ids = filler[:before]
        needle_start = len(ids)
        for piece in needle_ids:
            ids += piece
        ids += filler[before:]
        answers = []
        for (_, is_answer), piece in zip(question, question_ids):
            if is_answer:
                answers.append((len(ids), len(ids) + len(piece)))
            ids += piece
        return Example(ids, answers, needle_start, depth, self.tokenizer.decode(ids))

    def examples(self, length: int, depth: float, n: int, start: int = 0) -> list[Example]:
        """Return examples ``start .. start + n - 1`` at ``length`` and ``depth``."""
        return [self.example(length, depth, start + i) for i in range(n)]


def training_examples(gen: TaskGenerator, length: int, n: int, *, min_length: int | None = None,
                      pad_id: int, loss: str = "answer",
                      stream: int = 1) -> tuple[np.ndarray, np.ndarray, int]:
    """Return ``(ids, mask, utf8_bytes)`` of ``n`` training examples, each ``length + 1`` ids.

    Each example has a uniform random depth and, with ``min_length`` (the curriculum), a
    uniform random length in ``[min_length, length]``, padded after its answer with
    ``pad_id`` (never scored). ``loss``: ``answer`` scores only the answer tokens, ``all``
    every real token (plain language modelling of the examples). ``stream`` (1 train, 2
    validation; 0 is evaluation's) keeps the splits apart. Bytes count the examples' text, padding excluded.
    """
    if loss not in ("answer", "all"):
        raise LmlabError(f"unknown loss {loss!r}; choose answer (the answer tokens only) or all")
    lo = length if min_length is None else min_length
    if not 1 <= lo <= length:
        raise LmlabError(f"--min-length {min_length} must be between 1 and the training length {length}")
    if lo < gen.min_length():
        raise LmlabError(f"a {gen.spec.task} example needs at least {gen.min_length()} tokens with this "
                         f"tokenizer; raise {'--min-length' if min_length is not None else '--length'} "
                         "to that or more")
    draw = np.random.default_rng([gen.seed, stream, length, lo])
    ids = np.full((n, length + 1), pad_id, dtype=np.int64)
    mask = np.zeros((n, length + 1), dtype=np.uint8)
    nbytes = 0
    for i in range(n):
        size = int(draw.integers(lo, length + 1))
        # depth drawn from [0, 1] in steps of 1e-6, which is what the generator's seed resolves
        ex = gen.example(size, float(draw.integers(0, 1_000_001)) / 1_000_000, index=i, stream=stream)
        ids[i, : len(ex.ids)] = ex.ids
        if loss == "all":
            mask[i, 1 : len(ex.ids)] = 1
        else:
            for a, b in ex.answers:
                mask[i, a:b] = 1
        nbytes += len(ex.text.encode("utf-8"))
    return ids.reshape(-1), mask.reshape(-1), nbytes


def write_task_data(out: Path, spec: TaskSpec, length: int, *, train_examples: int = 20_000,
                    val_examples: int = 200, seed: int = 0, min_length: int | None = None,
                    loss: str = "answer", tokenizer_file: Path | None = None,
                    overwrite: bool = False) -> tuple[dict[str, Any], bool]:
    """Write a prepared-data folder of task examples that ``lmlab pretrain --data`` trains on;
    return ``(meta, reused)``.

    Every example is ``length + 1`` tokens (one training window of ``--block-size length``; see
    :func:`training_examples` for the curriculum and the loss mask) in the character-level
    :func:`task_tokenizer`, or the tokenizer.json ``tokenizer_file`` (e.g. a model's own, to
    fine-tune it). An ``out`` already holding the same data is reused.
    """
    from lmlab.data.prepare import ExampleSplit, write_examples
    from lmlab.data.tokenizers import load_tokenizer

    if length < 1 or train_examples < 1 or val_examples < 1:
        raise LmlabError("--length, --train-examples and --val-examples must be positive")
    tokenizer = task_tokenizer() if tokenizer_file is None else load_tokenizer(tokenizer_file)
    if tokenizer.pad_id is None:
        raise LmlabError(f"the tokenizer {tokenizer_file} has no <|pad|> token to pad short examples with; "
                         "use the default character tokenizer")
    settings = {**spec.to_dict(), "length": length, "min_length": min_length, "loss": loss, "seed": seed,
                "train_examples": train_examples, "val_examples": val_examples}
    tok_hash = hashlib.sha256(tokenizer.hf.to_str().encode()).hexdigest()
    fp = hashlib.sha256(json.dumps([settings, tok_hash], sort_keys=True).encode()).hexdigest()[:16]
    gen = TaskGenerator(tokenizer, spec, seed)
    splits = {}
    for split, n, stream in (("train", train_examples, 1), ("val", val_examples, 2)):
        ids, mask, nbytes = training_examples(gen, length, n, min_length=min_length, pad_id=tokenizer.pad_id,
                                              loss=loss, stream=stream)
        splits[split] = ExampleSplit(ids, mask, n, nbytes)
    return write_examples(Path(out), tokenizer, splits, length + 1, f"longctx:{spec.task}", fp,
                          info={"task": settings}, overwrite=overwrite)
