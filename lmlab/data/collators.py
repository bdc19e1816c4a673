"""Training examples of the pretraining objectives, built from windows of a token array.

Each builder turns the window that starts at a token offset into one example (a dict of
fixed-shape numpy arrays) with a random generator it is given:

- :class:`MLMExamples` (``mlm``): BERT's masked LM on ``block_size`` tokens.
- :class:`NSPExamples` (``mlm+nsp``): ``[CLS] A [SEP] B [SEP]`` with segment ids 0/1, B the
  true continuation of A or (half the time) a segment from elsewhere, plus masked LM.
- :class:`SpanCorruptionExamples` (``span-corruption``): T5's sentinel spans.
- :class:`DenoiseExamples` (``denoise``): BART's sentence permutation and text infilling;
  the target is the original text.
- :class:`BlankInfillingExamples` (``blank-infilling``): GLM's part A / part B sequence with
  2-D positions and its (T, T) attention mask, in :mod:`lmlab.data.blanks`.

:class:`ObjectiveBatches` draws the windows like :class:`~lmlab.data.windows.RandomWindows`
(whose generator state is the whole data position) and gives each example a generator of
its own, seeded from the run's seed and either the batch and row (``dynamic``: masks are
drawn afresh every time a window is seen, RoBERTa) or the window's offset (``static``: a
window always gets the same masks, BERT). So batches are reproducible, the same on any
number of processes, and an exact resume needs nothing beyond the windows' state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from lmlab.data import masking
from lmlab.data.blanks import BlankInfillingExamples
from lmlab.data.special import SpecialIds, find_special_ids, sentence_end_ids
from lmlab.data.tokenizers import Tokenizer
from lmlab.data.windows import RandomWindows
from lmlab.errors import LmlabError

OBJECTIVES = ("mlm", "mlm+nsp", "span-corruption", "denoise", "blank-infilling")
MASKINGS = ("dynamic", "static")
_DYNAMIC, _STATIC, _EVAL = 0, 1, 2  # first word of an example generator's key


class ExampleBuilder(Protocol):
    """What :class:`ObjectiveBatches` needs: the raw tokens per window and one example per window."""

    window: int

    def __call__(self, tokens: np.ndarray, offset: int,
                 rng: np.random.Generator) -> dict[str, np.ndarray]: ...


def _non_special(ids: SpecialIds) -> np.ndarray:
    return np.setdiff1d(np.arange(ids.vocab_size, dtype=np.int64), ids.specials)


@dataclass
class MLMExamples:
    """BERT's masked LM on windows of ``block_size`` tokens: ``input_ids`` and ``labels``."""

    ids: SpecialIds
    block_size: int
    prob: float = 0.15
    pool: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.ids.require("mlm", ("mask",))
        self.window = self.block_size
        self.pool = _non_special(self.ids)

    def mask(self, seq: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Mask ``seq`` BERT's way, never touching a special token; return ``(input_ids, labels)``."""
        return masking.bert_mask(seq, rng, mask_id=self.ids.mask, maskable=~np.isin(seq, self.ids.specials),
                                 random_pool=self.pool, prob=self.prob)

    def __call__(self, tokens: np.ndarray, offset: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        inputs, labels = self.mask(np.asarray(tokens[offset:offset + self.window], dtype=np.int64), rng)
        return {"input_ids": inputs, "labels": labels}


@dataclass
class NSPExamples:
    """BERT's sentence pairs ``[CLS] A [SEP] B [SEP]`` with masked LM and ``next_sentence_label``
    (0: B follows A in the text, 1: B is a random segment, as in Hugging Face)."""

    ids: SpecialIds
    block_size: int
    sentence_ends: np.ndarray
    prob: float = 0.15

    def __post_init__(self) -> None:
        self.ids.require("mlm+nsp", ("mask", "cls", "sep"))
        self.window = self.block_size - 3
        if self.window < 2:
            raise LmlabError(f"mlm+nsp needs --block-size 5 or more, got {self.block_size}")
        self.mlm = MLMExamples(self.ids, self.block_size, self.prob)

    def __call__(self, tokens: np.ndarray, offset: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        n = self.window
        seq = np.asarray(tokens[offset:offset + n], dtype=np.int64)
        # split after a sentence end when the window has one (BERT packs whole sentences), else anywhere
        ends = np.flatnonzero(np.isin(seq[:-1], self.sentence_ends)) + 1
        a = int(rng.choice(ends)) if len(ends) else int(rng.integers(1, n))
        first, second = seq[:a], seq[a:]
        is_random = bool(rng.random() < 0.5)
        if is_random:
            length = n - a
            high = len(tokens) - length + 1
            start = int(rng.integers(0, high))
            for _ in range(10):  # elsewhere: not overlapping this window (when the split allows it)
                if not offset - length < start < offset + n:
                    break
                start = int(rng.integers(0, high))
            second = np.asarray(tokens[start:start + length], dtype=np.int64)
        cls, sep = self.ids.cls, self.ids.sep
        pair = np.concatenate([[cls], first, [sep], second, [sep]]).astype(np.int64)
        inputs, labels = self.mlm.mask(pair, rng)
        segment = np.concatenate([np.zeros(a + 2, np.int64), np.ones(n - a + 1, np.int64)])
        return {"input_ids": inputs, "token_type_ids": segment, "labels": labels,
                "next_sentence_label": np.array(int(is_random), dtype=np.int64)}


@dataclass
class SpanCorruptionExamples:
    """T5's span corruption: raw windows sized so the corrupted input is at most ``block_size``."""

    ids: SpecialIds
    block_size: int
    noise_density: float = 0.15
    mean_span_length: float = 3.0

    def __post_init__(self) -> None:
        self.window, self.target_length = masking.t5_lengths(self.block_size, self.noise_density,
                                                             self.mean_span_length)
        _, spans = masking.t5_span_counts(self.window, self.noise_density, self.mean_span_length)
        self.ids.require("span-corruption", ("eos",), sentinels=spans)

    def __call__(self, tokens: np.ndarray, offset: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        seq = np.asarray(tokens[offset:offset + self.window], dtype=np.int64)
        noise = masking.random_spans_noise_mask(self.window, rng, self.noise_density, self.mean_span_length)
        inputs, target = masking.span_corrupt(seq, noise, self.ids.sentinels, self.ids.eos)
        return {"input_ids": inputs, "labels": target}


@dataclass
class DenoiseExamples:
    """BART's noising: sentences permuted, then text infilling; the target is ``[bos] text eos``."""

    ids: SpecialIds
    block_size: int
    sentence_ends: np.ndarray
    ratio: float = 0.3
    lam: float = 3.0

    def __post_init__(self) -> None:
        self.ids.require("denoise", ("mask", "eos", "pad"))
        self.prefix = [] if self.ids.bos is None else [self.ids.bos]
        self.window = self.block_size - 1 - len(self.prefix)
        if self.window < 2:
            raise LmlabError(f"denoise needs --block-size 4 or more, got {self.block_size}")

    def __call__(self, tokens: np.ndarray, offset: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        seq = np.asarray(tokens[offset:offset + self.window], dtype=np.int64)
        shuffled = masking.permute_sentences(seq, np.isin(seq, self.sentence_ends), rng)
        noised, _, _ = masking.text_infill(shuffled, rng, self.ids.mask, self.ratio, self.lam)
        source = np.concatenate([self.prefix, noised, [self.ids.eos]]).astype(np.int64)
        inputs = np.full(self.block_size, self.ids.pad, dtype=np.int64)
        inputs[:len(source)] = source
        return {"input_ids": inputs, "attention_mask": np.arange(self.block_size) < len(source),
                "labels": np.concatenate([self.prefix, seq, [self.ids.eos]]).astype(np.int64)}


def build_examples(objective: str, tokenizer: Tokenizer, block_size: int) -> ExampleBuilder:
    """Return the example builder of ``objective`` for ``tokenizer``'s special tokens.

    Raises LmlabError when the tokenizer lacks a token the objective needs (naming it and
    ``lmlab data prepare --mask-tokens``) or the block size is too small.
    """
    ids = find_special_ids(tokenizer)
    if objective == "mlm":
        return MLMExamples(ids, block_size)
    if objective == "mlm+nsp":
        return NSPExamples(ids, block_size, sentence_end_ids(tokenizer))
    if objective == "span-corruption":
        return SpanCorruptionExamples(ids, block_size)
    if objective == "denoise":
        return DenoiseExamples(ids, block_size, sentence_end_ids(tokenizer))
    if objective == "blank-infilling":
        return BlankInfillingExamples(ids, block_size)
    raise LmlabError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")


def example_rng(*key: int) -> np.random.Generator:
    """A generator seeded from a tuple of non-negative integers (numpy's SeedSequence)."""
    return np.random.default_rng([int(k) for k in key])


def collate(examples: list[dict[str, np.ndarray]], device: torch.device) -> dict[str, torch.Tensor]:
    """Stack examples of equal shapes into a batch of tensors on ``device`` (ids int64, masks bool)."""
    batch = {}
    for key in examples[0]:
        x = torch.from_numpy(np.stack([e[key] for e in examples]))
        batch[key] = x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x.to(device)
    return batch


class ObjectiveBatches:
    """Random windows of ``tokens`` turned into batches by ``builder``; resumable like RandomWindows.

    ``masking``: ``dynamic`` draws each example's noise from (seed, batch number, global row),
    ``static`` from (seed, window offset).
    """

    def __init__(self, tokens: np.ndarray, builder: ExampleBuilder, objective: str, *, batch_size: int,
                 seed: int = 0, masking: str = "dynamic", rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", split: str = "train"):
        if masking not in MASKINGS:
            raise LmlabError(f"--masking {masking!r} is not one of {', '.join(MASKINGS)}")
        self.windows = RandomWindows(tokens, block_size=builder.window - 1, batch_size=batch_size, seed=seed,
                                     rank=rank, world_size=world_size, device=device, split=split)
        self.builder, self.objective, self.masking = builder, objective, masking
        self.tokens, self.seed, self.device = tokens, seed, torch.device(device)
        self.rank, self.world_size = rank, world_size

    def next(self) -> dict[str, torch.Tensor]:
        """Return the next batch as tensors on the device."""
        offsets = self.windows.next_offsets()
        batch_no = self.windows.batches_drawn - 1
        examples = []
        for i, offset in enumerate(offsets):
            row = self.rank + i * self.world_size
            key = (_STATIC, offset) if self.masking == "static" else (_DYNAMIC, batch_no, row)
            examples.append(self.builder(self.tokens, int(offset), example_rng(self.seed, *key)))
        return collate(examples, self.device)

    def state_dict(self) -> dict[str, Any]:
        """Return the data position: the windows' state plus the objective and masking it feeds."""
        return {"kind": "objective_batches", "objective": self.objective, "masking": self.masking,
                "windows": self.windows.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; raise LmlabError when it was written for another objective."""
        mine = ("objective_batches", self.objective, self.masking)
        saved = (state.get("kind"), state.get("objective"), state.get("masking"))
        if saved != mine:
            raise LmlabError(f"the checkpoint's data position is for objective {saved[1]!r} with "
                             f"{saved[2]!r} masking, this run has {mine[1]!r} with {mine[2]!r}; "
                             "resume with the run's own --objective and --masking")
        self.windows.load_state_dict(state["windows"])


def eval_examples(tokens: np.ndarray, builder: ExampleBuilder,
                  offsets: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Return the examples of the windows at ``offsets`` with fixed noise (the same at every
    evaluation and for every run), for validation."""
    return [builder(tokens, int(o), example_rng(_EVAL, int(o))) for o in offsets]
