"""Rollouts: the policy samples responses to prompts with the KV-cache decode loop, and the
batch is laid out for scoring and training.

Sampling uses the temperature alone: top-k, top-p and repetition penalties change the
distribution a token is drawn from, and the training forward (which scores the tokens with
``logits / temperature``, :func:`lmlab.align.sequences.logits_of`) could not reproduce it, so
the ratio and the KL would be wrong. A response ends with (and keeps) its stop token; one that
reached ``max_new_tokens`` first has ``ended`` False. Rows are right-padded with a pad id that is
not a stop token: the response lengths are carried along, never inferred from padding, so a
response that ends with the end-of-text token keeps it whatever the pad id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmlab.align.sequences import Joined, join
from lmlab.errors import LmlabError


@dataclass
class Samples:
    """Prompts and the responses sampled for them: ids (stop token kept), and whether each ended
    with a stop token."""

    prompts: list[list[int]]
    responses: list[list[int]]
    ended: list[bool]


def truncate_at_stop(tokens: Sequence[int], stop_ids: Sequence[int]) -> tuple[list[int], bool]:
    """Return ``(tokens up to and including the first stop token, whether there was one)``."""
    stops = set(map(int, stop_ids))
    for i, t in enumerate(tokens):
        if int(t) in stops:
            return [int(x) for x in tokens[:i + 1]], True
    return [int(x) for x in tokens], False


def check_lengths(prompts: Sequence[Sequence[int]], max_new_tokens: int, block_size: int) -> None:
    """Raise LmlabError naming the first prompt that leaves no room for ``max_new_tokens`` in the
    model's context ``block_size``."""
    for i, p in enumerate(prompts):
        if len(p) + max_new_tokens > block_size:
            raise LmlabError(f"prompt {i} is {len(p)} tokens; with --max-new-tokens {max_new_tokens} it "
                             f"exceeds the policy's context of {block_size}; shorten the prompts or lower "
                             "--max-new-tokens")


def sample(model: nn.Module, prompts: list[list[int]], stop_ids: Sequence[int], max_new_tokens: int,
           temperature: float, seed: int) -> Samples:
    """Return :class:`Samples`: one response per prompt drawn from ``model`` at ``temperature``
    (> 0) with the KV cache (:func:`lmlab.generate.decode.decode`), ended at a stop token."""
    from lmlab.generate.decode import decode

    if not temperature > 0:
        raise LmlabError(f"--temperature {temperature} must be > 0: RLHF learns from sampled responses")
    if max_new_tokens < 1:
        raise LmlabError(f"--max-new-tokens {max_new_tokens} must be at least 1")
    check_lengths(prompts, max_new_tokens, model.config.block_size)
    new = decode(model, prompts, max_new_tokens, temperature=temperature, eos_id=list(stop_ids), seed=seed)
    cut = [truncate_at_stop(r, stop_ids) for r in new]
    return Samples([list(p) for p in prompts], [r for r, _ in cut], [e for _, e in cut])


def sample_in_batches(model: nn.Module, prompts: list[list[int]], stop_ids: Sequence[int],
                      max_new_tokens: int, temperature: float = 1.0, seed: int = 0,
                      batch_size: int = 64) -> Samples:
    """Return :func:`sample`'s :class:`Samples` for many prompts, ``batch_size`` at a time (batch
    ``a`` seeded with ``seed + a``, so the result does not depend on what else is sampled)."""
    out = Samples([], [], [])
    for a in range(0, len(prompts), batch_size):
        part = sample(model, prompts[a:a + batch_size], stop_ids, max_new_tokens, temperature, seed + a)
        out.prompts += part.prompts
        out.responses += part.responses
        out.ended += part.ended
    return out


def response_text(tokenizer: Any, prompt: Sequence[int], response: Sequence[int],
                  stop_ids: Sequence[int]) -> str:
    """Return the text ``response`` adds to ``prompt`` (its stop token left out): the decoded whole
    less the decoded prompt, so a tokenizer that spaces words when decoding (word-level) or marks
    word starts (SentencePiece) gives the separator too; the response decoded alone when the prompt's
    text is no prefix of the whole's."""
    stops = set(map(int, stop_ids))
    body = [int(t) for t in response if int(t) not in stops]
    head, whole = tokenizer.decode(list(prompt)), tokenizer.decode(list(prompt) + body)
    return whole[len(head):] if whole.startswith(head) else tokenizer.decode(body)


def pad_id_for(tokenizer: object, stop_ids: Sequence[int]) -> int:
    """Return the id that pads rows: the tokenizer's pad token, or failing that 0, never a stop id
    (padding is masked out either way; a distinct id keeps a stop token readable in the batch)."""
    pad = getattr(tokenizer, "pad_id", None)
    if pad is None or pad in stop_ids:
        pad = next(i for i in range(len(stop_ids) + 1) if i not in stop_ids)
    return int(pad)


def to_grid(rows: Sequence[torch.Tensor], joined: Joined) -> torch.Tensor:
    """Return ``(B, T - 1)``: each row's per-response-token values ``rows[b]`` (one per response
    token) placed where ``joined.response_mask`` is True, 0 elsewhere."""
    grid = torch.zeros(joined.response_mask.shape, dtype=torch.float32, device=joined.input_ids.device)
    for b, (p, r) in enumerate(zip(joined.prompt_lens, joined.response_lens)):
        grid[b, p - 1:p - 1 + r] = rows[b].to(grid.device, torch.float32)
    return grid


def from_grid(grid: torch.Tensor, joined: Joined) -> list[torch.Tensor]:
    """Return each row's values at its response tokens (the inverse of :func:`to_grid`)."""
    return [grid[b, p - 1:p - 1 + r].detach().float().cpu()
            for b, (p, r) in enumerate(zip(joined.prompt_lens, joined.response_lens))]


def join_samples(samples: Samples, rows: Sequence[int], pad_id: int,
                 device: torch.device | str = "cpu") -> Joined:
    """Return the right-padded ``prompt + response`` batch of ``samples``' rows ``rows``."""
    return join([samples.prompts[i] for i in rows], [samples.responses[i] for i in rows], pad_id, device)
