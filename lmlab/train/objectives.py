"""Training objectives: small callables ``objective(model, batch) -> loss``.

The training loop knows nothing about what a model predicts. An objective takes the
model and one batch (a dict of tensors already on the device) and returns the mean
loss as a scalar tensor, or ``(loss, metrics)`` where ``metrics`` maps names to
floats/0-d tensors that the loop averages over micro-batches and logs.

- ``causal``: next-token prediction (decoders, NPLM; the RNN and ELMo trainers bring their own).
- ``mlm`` / ``mlm+nsp``: masked LM on an encoder (plus BERT's next-sentence prediction),
  with the masked-token accuracy (and the NSP accuracy) as metrics.
- ``span-corruption`` / ``denoise``: an encoder-decoder predicts the target (T5's sentinel
  spans, BART's original text) from the corrupted input, teacher-forced.
- ``blank-infilling``: GLM's part B predicted on the decoder with 2-D positions and the
  part A bidirectional / part B causal attention mask.

The batches come from :mod:`lmlab.data.collators`; :mod:`lmlab.train.parts` pairs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from lmlab.nn.losses import IGNORE_INDEX, token_cross_entropy

Batch = dict[str, torch.Tensor]
ObjectiveResult = torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor | float]]
Objective = Callable[[torch.nn.Module, Batch], ObjectiveResult]


def loss_and_metrics(out: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """Split what an objective returned into ``(loss, metrics)`` (metrics empty for a bare loss)."""
    if isinstance(out, tuple):
        return out[0], dict(out[1])
    return out, {}


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


def blank_infilling_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """GLM's objective: mean cross-entropy of part B's tokens (and each span's end token).

    The decoder reads the whole sequence with ``position_ids`` (position in part A),
    ``block_position_ids`` (position within the span; used when the model has
    ``block_positions``) and the (B, T, T) ``attention_mask``; ``labels`` are -100 on part A
    and padding.
    """
    extra = {}
    if getattr(_unwrap(model).config, "block_positions", False):
        extra["block_positions"] = batch["block_position_ids"]
    return model(batch["input_ids"], positions=batch["position_ids"], attention_mask=batch["attention_mask"],
                 targets=batch["labels"], **extra)


def masked_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of the scored positions (labels != -100) whose arg-max prediction is the label."""
    scored = labels != IGNORE_INDEX
    hits = (logits.argmax(-1) == labels) & scored
    return hits.sum().float() / scored.sum().clamp_min(1)


def nsp_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return BERT's next-sentence ``(cross-entropy, accuracy)`` of ``logits (B, 2)`` on ``labels (B,)``."""
    return F.cross_entropy(logits.float(), labels), (logits.argmax(-1) == labels).float().mean()


def shift_right(labels: torch.Tensor, start_id: int) -> torch.Tensor:
    """Teacher forcing's decoder input: ``labels`` shifted right by one, ``start_id`` first (and in
    place of -100, as the position after an ignored label predicts nothing that counts)."""
    shifted = labels.new_full(labels.shape, start_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == IGNORE_INDEX, start_id)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner
