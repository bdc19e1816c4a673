"""The induction-head signature (Olsson et al. 2022, "In-context learning and induction heads").

An induction head attends from the current token to the token that followed the current token's
previous occurrence and copies it, so a model with one predicts the second copy of a repeated
random token sequence well although the first copy is unpredictable. Two measures on sequences
``r r`` (``r``: ``length`` random tokens, drawn without repeats when the vocabulary allows):

- the loss drop: the mean next-token loss (nats) over the first copy minus that over the second
  (both on the predictions of tokens inside the copy: at offsets ``0 .. length - 2``);
- prefix matching per head: at each position ``i`` of the second copy, the attention probability
  on position ``i - length + 1`` (the token after the previous occurrence of the current token),
  averaged over the positions and the sequences. Read through
  :func:`lmlab.nn.attention.record_attention`; a head near 1 is an induction head.

``positions`` restricts both to some offsets of the copy: a model trained to predict only some
tokens (the digits after keys in ``lmlab icl emergence``) is measured where it predicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lmlab.errors import LmlabError


def repeated_sequences(token_ids: list[int], length: int, n: int, seed: int) -> torch.Tensor:
    """Return ``(n, 2 length)`` ids: each row ``length`` random tokens of ``token_ids`` (no repeats
    within a row when there are at least ``length`` of them), then the same tokens again."""
    if length < 2:
        raise LmlabError(f"--length must be at least 2, got {length}")
    if len(token_ids) < 2:
        raise LmlabError("need at least two tokens to draw random sequences from")
    g = torch.Generator().manual_seed(seed)
    pool = torch.tensor(token_ids)
    rows = []
    for _ in range(n):
        if len(token_ids) >= length:
            r = pool[torch.randperm(len(pool), generator=g)[:length]]
        else:
            r = pool[torch.randint(len(pool), (length,), generator=g)]
        rows.append(torch.cat([r, r]))
    return torch.stack(rows)


@dataclass
class InductionResult:
    """Loss on the first and second copies (nats per token), their difference, and the
    prefix-matching score of every head ``[layer][head]``."""

    length: int
    sequences: int
    loss_first: float
    loss_second: float
    prefix_matching: list[list[float]]

    @property
    def loss_drop(self) -> float:
        """First-copy loss minus second-copy loss (nats): large when the model copies from context."""
        return self.loss_first - self.loss_second

    @property
    def best_head(self) -> tuple[int, int, float]:
        """Return ``(layer, head, score)`` of the head with the highest prefix-matching score."""
        return max(((lay, h, s) for lay, row in enumerate(self.prefix_matching) for h, s in enumerate(row)),
                   key=lambda t: t[2])

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-ready dict."""
        layer, head, score = self.best_head
        return {"length": self.length, "sequences": self.sequences, "loss_first": self.loss_first,
                "loss_second": self.loss_second, "loss_drop": self.loss_drop,
                "prefix_matching": self.prefix_matching,
                "best_head": {"layer": layer, "head": head, "score": score}}


@torch.no_grad()
def measure_induction(model: torch.nn.Module, ids: torch.Tensor, batch_size: int = 32,
                      positions: Sequence[int] | None = None) -> InductionResult:
    """Return the loss drop and prefix-matching scores of ``model`` on repeated sequences ``ids``
    ``(n, 2 length)`` (from :func:`repeated_sequences`), at the offsets ``positions`` of a copy
    (default: all, ``0 .. length - 2``).

    Raises LmlabError when the model records no attention (not an lmlab Transformer decoder with
    softmax attention) or the sequences do not fit its context.
    """
    from lmlab.nn.attention import record_attention

    n, total = ids.shape
    length = total // 2
    block = getattr(getattr(model, "config", None), "block_size", total)
    if total > block:
        raise LmlabError(f"sequences of 2 x {length} tokens exceed the model's context of {block}; lower "
                         f"--length to at most {block // 2}")
    offsets = torch.arange(length - 1) if positions is None else torch.tensor(list(positions))
    if len(offsets) == 0 or int(offsets.min()) < 0 or int(offsets.max()) > length - 2:
        raise LmlabError(f"positions must be offsets 0 .. {length - 2} within a copy of {length} tokens")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    first = second = 0.0
    scores: torch.Tensor | None = None
    query = offsets + length
    key = offsets + 1
    try:
        for start in range(0, n, batch_size):
            batch = ids[start:start + batch_size].to(device)
            with record_attention(model) as probs:
                logits = model(batch)
            if not isinstance(logits, torch.Tensor):
                logits = logits.logits if hasattr(logits, "logits") else logits[0]
            if not probs:
                raise LmlabError(f"a {type(model).__name__} records no attention probabilities; the "
                                 "induction measure needs an lmlab Transformer decoder with softmax "
                                 "attention (mha/gqa)")
            loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), batch[:, 1:], reduction="none")
            first += float(loss[:, offsets].sum())
            second += float(loss[:, query].sum())
            # probs: per layer (B, heads, T, T); the score of each head summed over rows and queries
            per_layer = torch.stack([p[:, :, query, key].sum(dim=(0, 2)).cpu() for p in probs])
            scores = per_layer if scores is None else scores + per_layer
    finally:
        model.train(was_training)
    assert scores is not None
    count = n * len(offsets)
    return InductionResult(length, n, first / count, second / count, (scores / count).tolist())


def plain_token_ids(tokenizer: Any, vocab_size: int) -> list[int]:
    """Return the ids below ``vocab_size`` that are not special tokens of ``tokenizer`` (None: all)."""
    if tokenizer is None:
        return list(range(vocab_size))
    special = set()
    for name in ("<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>", "<unk>"):
        i = tokenizer.token_to_id(name)
        if i is not None:
            special.add(i)
    return [i for i in range(min(vocab_size, tokenizer.vocab_size)) if i not in special]


def uniform_score(length: int) -> float:
    """Return the prefix-matching score of a head that attends uniformly to every earlier position
    (all offsets of the copy)."""
    return sum(1 / (i + 1) for i in range(length, 2 * length - 1)) / (length - 1)


def format_induction(result: InductionResult) -> str:
    """Return the result as text: the two losses and drop, then a layer x head table of scores."""
    layer, head, score = result.best_head
    lines = [f"repeated random sequences: {result.sequences} x 2 x {result.length} tokens",
             f"loss first copy {result.loss_first:.3f}, second copy {result.loss_second:.3f} nats/token "
             f"(drop {result.loss_drop:.3f})",
             "prefix-matching score per head (attention to the token after the previous occurrence; "
             f"uniform attention would give {uniform_score(result.length):.3f}):"]
    width = len(result.prefix_matching[0])
    lines.append("layer " + " ".join(f"{'h' + str(h):>6}" for h in range(width)))
    for i, row in enumerate(result.prefix_matching):
        lines.append(f"{i:>5} " + " ".join(f"{s:>6.3f}" for s in row))
    lines.append(f"strongest: layer {layer} head {head} ({score:.3f})")
    return "\n".join(lines)


__all__ = ["InductionResult", "format_induction", "measure_induction", "plain_token_ids",
           "repeated_sequences",
           "uniform_score"]
