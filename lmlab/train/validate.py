"""Validation of the non-causal objectives: the run's own loss on fixed held-out batches.

Bits per byte needs a probability for every token of the text, which only next-token
prediction gives; a masked or denoising objective scores a corrupted subset of the tokens,
so its validation figure is the objective's own loss (and metrics), on windows of the
validation split whose noise is fixed, hence comparable between evaluations and runs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from lmlab.data.collators import ExampleBuilder, collate, eval_examples
from lmlab.data.windows import eval_offsets
from lmlab.device import autocast
from lmlab.errors import LmlabError
from lmlab.nn.losses import IGNORE_INDEX
from lmlab.train.objectives import Objective, loss_and_metrics


@torch.no_grad()
def evaluate_objective(model: torch.nn.Module, objective: Objective, builder: ExampleBuilder,
                       tokens: np.ndarray, *, n_windows: int, batch_size: int, device: torch.device,
                       precision: str = "fp32", rank: int = 0, world_size: int = 1,
                       all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """Return ``{"val_loss": ..., "val_<metric>": ...}`` of ``objective`` on ``n_windows`` windows
    spread evenly over ``tokens``, each corrupted with fixed noise by ``builder``.

    Loss and metrics are averaged over the scored tokens (labels != -100). Rank ``r`` of a
    data-parallel run takes windows ``r::world_size``; ``all_reduce`` (a sum) combines them.
    The model is put in eval mode and restored to its previous mode afterwards.
    """
    window = builder.window
    if len(tokens) < window:
        raise LmlabError(f"the validation split has {len(tokens)} tokens, fewer than the {window} of one "
                         "window; lower --block-size, prepare more data or set --eval-iters 0")
    offsets = eval_offsets(len(tokens), window - 1, n_windows)
    offsets = offsets[offsets + window <= len(tokens)][rank::world_size]
    sums: dict[str, torch.Tensor] = {}
    count = torch.zeros((), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(offsets), batch_size):
            batch = collate(eval_examples(tokens, builder, offsets[i:i + batch_size]), device)
            with autocast(device, precision):
                loss, metrics = loss_and_metrics(objective(model, batch))
            n = (batch["labels"] != IGNORE_INDEX).sum().double()
            for k, v in {"loss": loss, **metrics}.items():
                sums[k] = sums.get(k, 0.0) + torch.as_tensor(v, dtype=torch.float64, device=device) * n
            count += n
    finally:
        model.train(was_training)
    names = sorted(sums)
    vec = torch.stack([count, *(sums[k] for k in names)]) if names else count[None]
    if all_reduce is not None:
        vec = all_reduce(vec)
    total = max(float(vec[0]), 1.0)
    return {f"val_{k}": round(float(vec[1 + i]) / total, 6) for i, k in enumerate(names)}
