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

import contextlib
from collections.abc import Callable, Iterator
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


def mlm_loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Masked LM (BERT, RoBERTa): the encoder's mean cross-entropy over the masked positions, and
    ``mlm_accuracy``, the share of them whose arg-max prediction is the original token.

    The loss comes from the encoder's forward with ``targets`` (its vocabulary projection runs only
    at the masked positions); the accuracy is read off those same logits as the head emits them.
    """
    with _capture_output(_unwrap(model).require_mlm_head()) as head:
        loss = model(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"),
                     targets=batch["labels"])
    return loss, {"mlm_accuracy": _accuracy(head, batch["labels"])}


def mlm_nsp_loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BERT's pretraining loss: masked LM plus next-sentence cross-entropy (from the pooled [CLS]),
    with ``mlm_accuracy``, ``nsp_loss`` and ``nsp_accuracy`` as metrics.

    Both losses come from one forward through the (possibly data-parallel) model: the last
    block's output, captured on the way, feeds the next-sentence head.
    """
    raw = _unwrap(model)
    with _capture_output(raw.require_mlm_head()) as head, _capture_output(raw.blocks[-1]) as hidden:
        mlm = model(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"),
                    targets=batch["labels"])
    logits = raw.nsp_logits(hidden[0])
    nsp = F.cross_entropy(logits.float(), batch["next_sentence_label"])
    nsp_accuracy = (logits.argmax(-1) == batch["next_sentence_label"]).float().mean()
    return mlm + nsp, {"mlm_accuracy": _accuracy(head, batch["labels"]), "nsp_loss": nsp.detach(),
                       "nsp_accuracy": nsp_accuracy}


def seq2seq_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Span corruption (T5) and denoising (BART): the encoder-decoder's mean cross-entropy of the
    target given the corrupted input, teacher-forced (the model shifts the labels right behind
    its ``decoder_start_token_id`` to make the decoder's input)."""
    return model(batch["input_ids"], attention_mask=batch.get("attention_mask"), targets=batch["labels"])


def _accuracy(captured: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Arg-max accuracy of the masked-position logits the MLM head emitted (rows in the order of
    the scored positions); 0 when nothing was masked."""
    scored = labels[labels != IGNORE_INDEX]
    if not captured or scored.numel() == 0:
        return torch.zeros((), device=labels.device)
    return (captured[0].argmax(-1) == scored).float().mean()


@contextlib.contextmanager
def _capture_output(module: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect ``module``'s outputs during the enclosed forward pass (a hook, removed on exit), so an
    objective reads what the model computed without a second pass or a call around its forward
    (which data parallelism needs)."""
    outputs: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _args, out: outputs.append(out))
    try:
        yield outputs
    finally:
        handle.remove()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner
