"""Conditional bits per byte of an encoder-decoder: how well it predicts a target given its source.

Each example is a source and a target token sequence; the model reads the whole source and
predicts every target token from the source and the target tokens before it (teacher forcing),
the end-of-sequence token included (a model must also say where the target ends). Bits per byte =
total nats / ln 2 / UTF-8 bytes of the targets.

This is not comparable to a causal LM's bits per byte: a causal LM predicts every token of a text
from its left context alone, while here the source (often the very text the target is drawn from,
as in span corruption or denoising) is given. Compare encoder-decoders with each other, on the same
pairs.

Pairs come from a file (JSON lines ``{"source": ..., "target": ...}`` or ``source<TAB>target``), or,
for prepared data without pairs, from its token windows cut in two halves: the target is each
window's second half, the source its first (:func:`window_pairs`). Prepared data also gives the
model's own pretraining objective as pairs (:func:`objective_pairs`: span corruption's or
denoising's corrupted input and target, with the fixed validation noise of
:mod:`lmlab.data.collators`), whose conditional loss is the objective's loss; that one has no bits
per byte, as it scores a corrupted subset of the text.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.data.tokenizers import encode_sequence
from lmlab.device import autocast
from lmlab.errors import LmlabError
from lmlab.nn.losses import IGNORE_INDEX, token_cross_entropy

LN2 = math.log(2.0)
NOTE = ("conditional bits per byte of the target given the source: not comparable to a causal LM's bits "
        "per byte, which predicts every token from its left context alone")


@dataclass
class Example:
    """One source/target pair as token ids, with the UTF-8 bytes the target stands for."""

    source: list[int]
    target: list[int]
    target_bytes: float


@dataclass
class ConditionalResult:
    """Totals and figures of one conditional evaluation."""

    loss: float  # mean nats per target token
    perplexity: float
    bits_per_byte: float | None  # None when the byte count is unknown (0)
    tokens: int  # target tokens predicted
    bytes: float
    nats: float
    examples: int

    def as_dict(self) -> dict[str, Any]:
        """Return the result as a plain dict (JSON-ready)."""
        return asdict(self)


def read_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Return the (source, target) texts of a pairs file: JSON lines with ``source`` and ``target``
    keys, or lines ``source<TAB>target``. Blank lines are skipped; a bad line raises LmlabError naming it."""
    p = Path(path)
    if not p.is_file():
        raise LmlabError(f"pairs file {p} does not exist; give a JSON-lines or tab-separated file of "
                         "source/target pairs")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise LmlabError(f"pairs file {p} is not UTF-8 text; re-save it as UTF-8") from None
    pairs = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise LmlabError(f"{p}, line {n}: not valid JSON ({e.msg}); write one JSON object per "
                                 "line") from None
            if not isinstance(obj.get("source"), str) or not isinstance(obj.get("target"), str):
                raise LmlabError(f"{p}, line {n}: needs string fields \"source\" and \"target\"")
            pairs.append((obj["source"], obj["target"]))
        elif "\t" in line:
            source, target = line.split("\t", 1)
            pairs.append((source, target))
        else:
            raise LmlabError(f"{p}, line {n}: neither a JSON object nor source<TAB>target; "
                             "write {\"source\": ..., \"target\": ...} per line")
    if not pairs:
        raise LmlabError(f"pairs file {p} holds no pairs; write one source/target pair per line")
    return pairs


def encode_pairs(pairs: list[tuple[str, str]], tokenizer: Any, eos_id: int) -> list[Example]:
    """Tokenize text pairs as the model reads them (:func:`lmlab.data.tokenizers.encode_sequence`:
    the tokenizer's own post-processing, e.g. T5's closing ``</s>``, then ``eos_id`` if missing)."""
    return [Example(encode_sequence(tokenizer, source, eos_id), encode_sequence(tokenizer, target, eos_id),
                    float(len(target.encode("utf-8")))) for source, target in pairs]


def window_pairs(tokens: np.ndarray, block_size: int, bytes_per_token: float, eos_id: int,
                 max_examples: int | None = None) -> list[Example]:
    """Cut ``tokens`` into windows of ``block_size`` tokens; return each window's first half as the
    source and its second half (then ``eos_id``) as the target, whose bytes are estimated as its
    tokens x ``bytes_per_token``. ``max_examples`` spreads that many windows over the array."""
    half = block_size // 2
    if half < 1 or len(tokens) < 2:
        raise LmlabError(f"need windows of at least 2 tokens and a split of at least 2, got block size "
                         f"{block_size} and {len(tokens)} tokens")
    starts = np.arange(0, max(1, len(tokens) - 1), block_size)
    if max_examples is not None and max_examples < len(starts):
        starts = starts[np.linspace(0, len(starts) - 1, max_examples).round().astype(int)]
    out = []
    for s in starts:
        window = np.asarray(tokens[s: s + block_size], dtype=np.int64).tolist()
        cut = min(half, len(window) - 1) if len(window) > 1 else 0
        if cut < 1:
            continue
        target = window[cut:]
        out.append(Example(window[:cut], [*target, eos_id], len(target) * bytes_per_token))
    return out


def objective_pairs(tokens: np.ndarray, tokenizer: Any, objective: str, block_size: int,
                    max_examples: int | None = None) -> list[Example]:
    """Return the pretraining ``objective`` (``span-corruption`` or ``denoise``) on windows spread
    evenly over ``tokens`` (all of them unless ``max_examples``) as source/target examples, each
    window corrupted with the fixed noise :func:`lmlab.data.collators.eval_examples` gives it (as in
    ``lmlab pretrain``'s validation); ``target_bytes`` is 0 (no bits per byte). Raises LmlabError
    when ``tokenizer`` lacks a token the objective needs."""
    from lmlab.data.collators import build_examples, eval_examples
    from lmlab.data.windows import eval_offsets

    builder = build_examples(objective, tokenizer, block_size)
    if len(tokens) < builder.window:
        raise LmlabError(f"the split has {len(tokens)} tokens, fewer than the {builder.window} of one "
                         f"{objective} window; lower --block-size or prepare more data")
    offsets = eval_offsets(len(tokens), builder.window - 1, max_examples)
    offsets = offsets[offsets + builder.window <= len(tokens)]
    out = []
    for ex in eval_examples(tokens, builder, offsets):
        source = ex["input_ids"][ex["attention_mask"]] if "attention_mask" in ex else ex["input_ids"]
        out.append(Example(source.tolist(), ex["labels"][ex["labels"] != IGNORE_INDEX].tolist(), 0.0))
    return out


@torch.no_grad()
def evaluate_conditional(model: torch.nn.Module, examples: list[Example], *, batch_size: int = 8,
                         device: torch.device | str = "cpu", precision: str = "fp32") -> ConditionalResult:
    """Return the conditional loss, perplexity and bits per byte of ``model`` (an encoder-decoder)
    over ``examples``. Sources are right-padded and masked; examples of similar length share a
    batch. The model is put in eval mode and restored afterwards."""
    if not examples:
        raise LmlabError("nothing to evaluate: no source/target examples")
    if batch_size < 1:
        raise LmlabError(f"--batch-size must be at least 1, got {batch_size}")
    device = torch.device(device)
    limit = model.config.max_positions
    for i, ex in enumerate(examples):
        for what, ids in (("source", ex.source), ("target", ex.target)):
            if limit is not None and len(ids) > limit:
                raise LmlabError(f"example {i + 1}: the {what} has {len(ids)} tokens but the model has "
                                 f"{limit} {what} positions (block_size); shorten it or use a smaller "
                                 "--block-size")
            if not ids:
                raise LmlabError(f"example {i + 1}: the {what} is empty; give every pair a source and a "
                                 "target")
    pad = model.config.pad_token_id
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i].source), len(examples[i].target)))
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    was_training = model.training
    model.eval()
    try:
        for b in range(0, len(order), batch_size):
            group = [examples[i] for i in order[b: b + batch_size]]
            S, T = max(len(e.source) for e in group), max(len(e.target) for e in group)
            src = torch.full((len(group), S), pad, dtype=torch.long)
            mask = torch.zeros_like(src)
            labels = torch.full((len(group), T), IGNORE_INDEX, dtype=torch.long)
            for r, e in enumerate(group):
                src[r, :len(e.source)], mask[r, :len(e.source)] = torch.tensor(e.source), 1
                labels[r, :len(e.target)] = torch.tensor(e.target)
            src, mask, labels = src.to(device), mask.to(device), labels.to(device)
            with autocast(device, precision):
                logits = model(src, model.shift_right(labels), mask)
            total += token_cross_entropy(logits, labels, reduction="sum").double().cpu()
            count += int((labels != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    nats = float(total)
    n_bytes = float(sum(e.target_bytes for e in examples))
    loss = nats / max(count, 1)
    return ConditionalResult(loss=loss, perplexity=math.exp(min(loss, 700.0)),
                             bits_per_byte=nats / LN2 / n_bytes if n_bytes else None, tokens=count,
                             bytes=n_bytes, nats=nats, examples=len(examples))
