"""Log-likelihood of a continuation given a context: the quantity lm-evaluation-harness's
``loglikelihood`` requests ask for (multiple choice, cloze), in-context learning scores labels by,
and the server's ``echo`` + ``logprobs`` return token by token.

For each ``(context ids, continuation ids)`` the model reads ``context + continuation`` (the last
``block_size + 1`` tokens of it when longer, as lm-eval truncates) and returns the sum of the
log-probabilities of the continuation's tokens, each given everything before it, whether each was
the greedy (argmax) token, and the per-token values. Text pairs are split into tokens as lm-eval
splits them (:func:`encode_pair`): trailing spaces of the context move to the continuation, the
whole text is encoded once and the continuation is what follows the context's own encoding, so
ids at the boundary are the ones the joined text has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from lmlab.errors import LmlabError
from lmlab.evaluate.perplexity import model_logits


@dataclass
class Loglikelihood:
    """The continuation's total log-probability (nats), whether every token was the argmax, each
    token's log-probability, and the entropy (nats) of the model's next-token distribution at each
    continuation position (how unsure it was there, whatever token came)."""

    logprob: float
    greedy: bool
    token_logprobs: list[float]
    token_entropies: list[float] = field(default_factory=list)


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Return ``(context ids, continuation ids)`` for a text pair, split as lm-eval splits it."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = list(tokenizer.hf.encode(context + continuation, add_special_tokens=False).ids)
    ctx = list(tokenizer.hf.encode(context, add_special_tokens=False).ids)
    return whole[:len(ctx)], whole[len(ctx):]


@torch.no_grad()
def loglikelihoods(model: torch.nn.Module, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                   block_size: int, batch_size: int = 16,
                   device: torch.device | str | None = None) -> list[Loglikelihood]:
    """Return one :class:`Loglikelihood` per ``(context ids, continuation ids)`` pair, in order.

    Raises LmlabError for an empty context or continuation (lm-eval gives an empty context the
    end-of-text token; do the same before calling).
    """
    if device is None:
        device = next(model.parameters()).device
    rows: list[tuple[list[int], int]] = []  # (input ids, number of continuation tokens scored)
    for i, (ctx, cont) in enumerate(pairs):
        if not ctx or not cont:
            part = "context" if not ctx else "continuation"
            raise LmlabError(f"pair {i} has an empty {part}; give at least one token (an empty context "
                             f"takes the end-of-text token)")
        whole = (list(ctx) + list(cont))[-(block_size + 1):]
        rows.append((whole, min(len(cont), len(whole) - 1)))
    out: list[Loglikelihood | None] = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths share a batch
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = max(len(rows[i][0]) for i in batch) - 1
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            for b, i in enumerate(batch):
                seq = rows[i][0][:-1]
                ids[b, :len(seq)] = torch.tensor(seq)
            logp = F.log_softmax(model_logits(model, ids.to(device)).float(), dim=-1).cpu()
            for b, i in enumerate(batch):
                whole, n = rows[i]
                end = len(whole) - 1
                positions = torch.arange(end - n, end)
                targets = torch.tensor(whole[-n:])
                rowlp = logp[b, positions]
                values = rowlp.gather(-1, targets[:, None])[:, 0]
                greedy = bool((rowlp.argmax(-1) == targets).all())
                entropies = -(rowlp.exp() * rowlp).sum(-1)
                out[i] = Loglikelihood(float(values.double().sum()), greedy, values.tolist(),
                                       entropies.tolist())
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]
