"""Sampling rules: repetition penalty, temperature, top-k and top-p (in Hugging Face's order)."""

from __future__ import annotations

import torch

from lmlab.errors import LmlabError


def process_logits(logits: torch.Tensor, seen: torch.Tensor | None = None, temperature: float = 1.0,
                   top_k: int | None = None, top_p: float | None = None,
                   repetition_penalty: float = 1.0) -> torch.Tensor:
    """Return ``logits (B, V)`` after the repetition penalty, temperature, top-k and top-p rules.

    ``seen (B, V)`` bool marks tokens already in each row (prompt and output): their
    logits are divided by ``repetition_penalty`` when positive, multiplied when negative
    (Keskar et al. 2019). Removed tokens get ``-inf``. Temperature 0 leaves the scale alone
    (the caller takes the argmax).
    """
    if repetition_penalty != 1.0 and seen is not None:
        penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum <= 1 - top_p
        drop_sorted[..., -1] = False  # always keep the most likely token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def select_next(logits: torch.Tensor, temperature: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Return the next token per row ``(B,)``: argmax when ``temperature == 0``, else a sample."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def check_settings(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None,
                    repetition_penalty: float) -> None:
    if max_new_tokens < 0:
        raise LmlabError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if temperature < 0:
        raise LmlabError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise LmlabError(f"top_k={top_k} must be >= 1 (or unset to disable)")
    if top_p is not None and not 0 < top_p <= 1:
        raise LmlabError(f"top_p={top_p} must be in (0, 1] (1 disables it)")
    if repetition_penalty <= 0:
        raise LmlabError(f"repetition_penalty={repetition_penalty} must be > 0 (1 disables it)")
