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

from lmlab.nn.losses import token_cross_entropy

Batch = dict[str, torch.Tensor]
ObjectiveResult = torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor | float]]
Objective = Callable[[torch.nn.Module, Batch], ObjectiveResult]


def causal_lm_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token objective: mean cross-entropy of ``model(batch['input_ids'])`` on ``batch['labels']``.

    ``labels`` are the inputs shifted left by one (the batch sampler builds them), so
    position t is scored on token t+1. Returns the mean loss in nats per token. Models
    with ``fused_loss = True`` (the Decoder) take ``targets=`` and return the loss
    themselves, so they can fuse the output layer with the loss.
    """
    if getattr(_unwrap(model), "fused_loss", False):
        return model(batch["input_ids"], targets=batch["labels"])
    logits = model(batch["input_ids"])
    if not isinstance(logits, torch.Tensor):
        logits = logits.logits if hasattr(logits, "logits") else logits[0]
    return token_cross_entropy(logits, batch["labels"])


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner
