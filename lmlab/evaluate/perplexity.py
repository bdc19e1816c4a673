"""Perplexity and bits per byte of a language model on a token stream.

The split is cut into non-overlapping windows of ``block_size`` predictions; each
token after the first is predicted exactly once, with the context available inside its
window. With a ``stride`` below the block size the windows slide instead (Hugging Face's
"perplexity of fixed-length models"): each window after the first scores only its last
``stride`` predictions, so every token still counts once but has at least ``block_size -
stride`` tokens of context: a lower, fairer figure for a fixed-context model, at
``block_size / stride`` times the cost.

Bits per byte = total nats / ln 2 / UTF-8 bytes of the evaluated text: the whole
split's byte count for a full pass, else predicted tokens x the split's bytes-per-token.
It compares models whose tokenizers differ; perplexity is per token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from lmlab.data.windows import eval_offsets
from lmlab.device import autocast
from lmlab.errors import LmlabError
from lmlab.nn.losses import IGNORE_INDEX, token_cross_entropy

LN2 = math.log(2.0)


@dataclass
class PerplexityResult:
    """Totals and figures of one evaluation."""

    loss: float  # mean nats per predicted token
    perplexity: float  # exp(loss)
    bits_per_byte: float | None  # None when the byte count is unknown
    tokens: int  # predicted tokens
    bytes: float | None  # UTF-8 bytes the predicted tokens stand for
    nats: float  # total negative log-likelihood
    windows: int
    full_pass: bool

    def as_dict(self) -> dict:
        """Return the result as a plain dict (JSON-ready)."""
        return asdict(self)


def model_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Return ``model(ids)``'s logits ``(B, T, V)``, from a tensor or an output with ``.logits``."""
    out = model(ids)
    if not isinstance(out, torch.Tensor):
        out = out.logits if hasattr(out, "logits") else out[0]
    return out


@torch.no_grad()
def sum_nll(
    model: torch.nn.Module,
    tokens: np.ndarray,
    starts: np.ndarray,
    *,
    block_size: int,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    skip: int = 0,
    loss_mask: np.ndarray | None = None,
) -> tuple[float, int]:
    """Return ``(total nats, scored tokens)`` of ``model`` over the windows at ``starts``.

    Window ``s`` feeds ``tokens[s : s+T]`` and scores ``tokens[s+1 : s+T+1]`` (shorter
    at the end of the array), except its first ``skip`` predictions when ``s > 0``
    (sliding windows: they are context only) and the tokens whose ``loss_mask`` is 0.
    Windows of equal length are batched ``batch_size`` at a time.
    """
    n = len(tokens)
    lengths = np.minimum(block_size, n - 1 - starts)
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for length in np.unique(lengths):
        if length <= 0:
            continue
        group = starts[lengths == length]
        for i in range(0, len(group), batch_size):
            rows = np.stack(
                [np.asarray(tokens[s : s + length + 1], dtype=np.int64) for s in group[i : i + batch_size]]
            )
            x = torch.from_numpy(rows).to(device)
            targets = x[:, 1:].clone()
            if loss_mask is not None:
                rows_mask = [np.asarray(loss_mask[s + 1 : s + length + 1]) for s in group[i : i + batch_size]]
                keep = np.stack(rows_mask)
                targets[torch.from_numpy(keep == 0).to(device)] = IGNORE_INDEX
            if skip:
                later = torch.from_numpy(group[i : i + batch_size] > 0).to(device)
                targets[later, :skip] = IGNORE_INDEX
            with autocast(device, precision):
                logits = model_logits(model, x[:, :-1])
            total += token_cross_entropy(logits, targets, reduction="sum").double().cpu()
            count += int((targets != IGNORE_INDEX).sum())
    return float(total), count


def evaluate_perplexity(
    model: torch.nn.Module,
    tokens: np.ndarray,
    *,
    block_size: int,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    max_windows: int | None = None,
    stride: int | None = None,
    split_bytes: int | None = None,
    bytes_per_token: float | None = None,
    rank: int = 0,
    world_size: int = 1,
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> PerplexityResult:
    """Evaluate ``model`` on the token array ``tokens``; return a :class:`PerplexityResult`.

    With ``max_windows`` None the whole array is scored (a full pass; bits per byte use
    ``split_bytes``); otherwise that many windows spread evenly over it (bits per byte
    use ``bytes_per_token``). ``stride`` (default ``block_size``) slides the windows
    by that many tokens (see the module docstring). Under data parallelism rank ``r`` scores windows
    ``r::world_size`` and ``all_reduce`` (a sum over ranks) combines the totals.
    The model is put in eval mode and restored to its previous mode afterwards.
    """
    device = torch.device(device)
    if batch_size < 1 or block_size < 1:
        raise LmlabError(f"--batch-size and --block-size must be at least 1 (got {batch_size} and "
                         f"{block_size}); e.g. --batch-size 8")
    if len(tokens) < 2:
        raise LmlabError(f"cannot evaluate on {len(tokens)} tokens; the split needs at least 2")
    model_block = getattr(getattr(model, "config", None), "block_size", None)
    if isinstance(model_block, int) and block_size > model_block:
        raise LmlabError(
            f"block size {block_size} exceeds the model's context of {model_block}; "
            f"use --block-size {model_block} or less"
        )
    starts = eval_offsets(len(tokens), block_size, max_windows, stride)
    full_pass = len(starts) == len(eval_offsets(len(tokens), block_size, stride=stride))
    was_training = model.training
    model.eval()
    try:
        nats, count = sum_nll(
            model,
            tokens,
            starts[rank::world_size],
            block_size=block_size,
            batch_size=batch_size,
            device=device,
            precision=precision,
            skip=block_size - (stride or block_size),
        )
    finally:
        model.train(was_training)
    if all_reduce is not None:
        t = all_reduce(torch.tensor([nats, float(count)], dtype=torch.float64, device=device))
        nats, count = float(t[0]), int(round(float(t[1])))
    loss = nats / max(count, 1)
    n_bytes: float | None
    if full_pass and split_bytes is not None:
        n_bytes = float(split_bytes)
    elif bytes_per_token is not None:
        n_bytes = count * bytes_per_token
    else:
        n_bytes = None
    bpb = nats / LN2 / n_bytes if n_bytes else None
    return PerplexityResult(
        loss=loss,
        perplexity=math.exp(min(loss, 700.0)),
        bits_per_byte=bpb,
        tokens=count,
        bytes=n_bytes,
        nats=nats,
        windows=len(starts),
        full_pass=full_pass,
    )


@torch.no_grad()
def example_loss(model: torch.nn.Module, tokens: np.ndarray, loss_mask: np.ndarray | None,
                 example_len: int, *,
                 max_examples: int, batch_size: int = 8, device: torch.device | str = "cpu",
                 precision: str = "fp32", rank: int = 0, world_size: int = 1,
                 all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Return the mean loss (nats per scored token) of ``model`` on example data: up to
    ``max_examples`` whole examples of ``example_len`` tokens spread evenly over ``tokens``,
    scored where ``loss_mask`` is 1 (e.g. the answers of passkey examples; see
    :mod:`lmlab.data.prepare`). Rank ``r`` takes examples ``r::world_size``; ``all_reduce`` sums."""
    device = torch.device(device)
    n = len(tokens) // example_len
    pick = np.unique(np.linspace(0, n - 1, num=min(n, max_examples)).round().astype(np.int64))
    was_training = model.training
    model.eval()
    try:
        nats, count = sum_nll(model, tokens, pick[rank::world_size] * example_len, block_size=example_len - 1,
                              batch_size=batch_size, device=device, precision=precision, loss_mask=loss_mask)
    finally:
        model.train(was_training)
    if all_reduce is not None:
        t = all_reduce(torch.tensor([nats, float(count)], dtype=torch.float64, device=device))
        nats, count = float(t[0]), float(t[1])
    return nats / max(count, 1)
