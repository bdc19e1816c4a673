"""AdamW with the usual parameter groups, and the learning-rate schedules (warmup + cosine by
default; linear, constant and ULMFiT's slanted triangular).

Weight decay applies to weight matrices only: norms, biases and embeddings (token
and learned position tables) are not decayed (decaying an embedding shrinks rare
tokens' vectors toward zero). A parameter may carry its own optimiser settings in an
``lmlab_optim`` attribute, e.g.
``p.lmlab_optim = {"lr": 1e-2, "weight_decay": 0.0}`` for Infini-attention's gate;
its learning rate then follows the same schedule scaled by its own peak. Discriminative
learning rates (ULMFiT) scale each parameter's peak by its layer group's factor the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

_NO_DECAY_MODULES = (
    nn.Embedding,
    nn.EmbeddingBag,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.RMSNorm,
)
# Module classes named like these (e.g. lmlab.nn's RMSNorm, LearnedPositions) are norms or embeddings too.
_NO_DECAY_WORDS = ("norm", "embed", "position")


def _no_decay_ids(model: nn.Module) -> set[int]:
    """Ids of parameters that must not be decayed: biases, vectors, norm and embedding weights."""
    ids: set[int] = set()
    for module in model.modules():
        kind = type(module).__name__.lower()
        no_decay_module = isinstance(module, _NO_DECAY_MODULES) or any(w in kind for w in _NO_DECAY_WORDS)
        for p in module.parameters(recurse=False):
            if no_decay_module or p.ndim < 2:
                ids.add(id(p))
    return ids


def param_groups(model: nn.Module, weight_decay: float, lr: float,
                 lr_scales: Mapping[int, float] | None = None) -> list[dict]:
    """Split ``model``'s trainable parameters into optimiser groups.

    Returns a list of dicts (``params``, ``weight_decay``, ``lr``, ``base_lr``, ``name``):
    'decay' for weight matrices, 'no_decay' for biases/norms/embeddings (a weight tied
    to an embedding counts as an embedding), and one group per distinct
    ``lmlab_optim`` override or learning-rate scale. ``lr_scales`` maps ``id(parameter)``
    to a factor on its peak rate (discriminative learning rates). Empty groups are dropped.
    """
    no_decay = _no_decay_ids(model)
    groups: dict[tuple, dict] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        override = dict(getattr(p, "lmlab_optim", {}) or {})
        wd = override.pop("weight_decay", 0.0 if id(p) in no_decay else weight_decay)
        group_lr = override.pop("lr", lr) * (lr_scales or {}).get(id(p), 1.0)
        if override:
            raise ValueError(
                f"parameter {name}: lmlab_optim supports only 'lr' and 'weight_decay', not {sorted(override)}"
            )
        key = (wd, group_lr)
        if key not in groups:
            label = "decay" if wd > 0 else "no_decay"
            if group_lr != lr:
                label += f"_lr{group_lr:g}"
            groups[key] = {
                "params": [],
                "weight_decay": wd,
                "lr": group_lr,
                "base_lr": group_lr,
                "name": label,
            }
        groups[key]["params"].append(p)
    return [g for g in groups.values() if g["params"]]


def build_adamw(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    device: torch.device | None = None,
    lr_scales: Mapping[int, float] | None = None,
) -> torch.optim.AdamW:
    """Return an AdamW over :func:`param_groups` (``lr_scales`` as there), fused on devices that
    support it, else foreach."""
    device = device or next(model.parameters()).device
    kwargs: dict = {}
    if device.type in ("cuda", "cpu", "mps"):
        kwargs["fused"] = True
    groups = param_groups(model, weight_decay, lr, lr_scales)
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)


def discriminative_scales(groups: list[list[nn.Parameter]], factor: float) -> dict[int, float]:
    """Return ``{id(parameter): factor ** -depth}`` for layer groups listed bottom to top.

    The top group keeps its peak rate (depth 0), each group below trains at the rate of the
    one above divided by ``factor`` (ULMFiT's eta^(l-1) = eta^l / 2.6).
    """
    n = len(groups)
    return {id(p): factor ** -(n - 1 - i) for i, group in enumerate(groups) for p in group}


@dataclass
class Schedule:
    """Linear warmup over ``warmup_steps`` steps, then a decay from ``lr`` to ``min_lr``: cosine
    (``kind="cosine"``), linear, or none (``"constant"``); or ULMFiT's slanted triangular rates.

    The schedule runs on training progress in [0, 1] (step / max_steps, or elapsed time /
    time budget, whichever limit is nearer), so the same schedule serves step-limited
    and Cramming-style time-limited runs.

    ``kind="stlr"`` is Howard & Ruder's eq. 3 with ``cut = cut_frac * T``: the rate rises
    linearly from ``lr / ratio`` to ``lr`` over the first ``cut_frac`` of the run and falls
    linearly back to ``lr / ratio`` at its end (the paper floors ``cut`` to whole steps; the two
    agree when ``cut_frac * T`` is whole). It is its own warmup: ``warmup_steps`` and
    ``min_lr`` do not apply.
    """

    lr: float
    min_lr: float = 0.0
    warmup_steps: int = 0
    kind: str = "cosine"
    cut_frac: float = 0.1
    ratio: float = 32.0

    def __call__(self, step: int, progress: float) -> float:
        """Return the learning rate for optimiser step ``step`` (0-based) at ``progress``."""
        x = min(max(progress, 0.0), 1.0)
        if self.kind == "stlr":
            p = x / self.cut_frac if x < self.cut_frac else 1.0 - (x - self.cut_frac) / (1.0 - self.cut_frac)
            return self.lr * (1.0 + p * (self.ratio - 1.0)) / self.ratio
        if self.kind == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * x))
        elif self.kind == "linear":
            decay = 1.0 - x
        elif self.kind == "constant":
            decay = 1.0
        else:
            raise ValueError(f"unknown schedule {self.kind!r}")
        lr = self.min_lr + (self.lr - self.min_lr) * decay
        if self.warmup_steps > 0 and step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float, peak_lr: float) -> None:
    """Set each group's learning rate to ``lr`` scaled by its own peak (``base_lr / peak_lr``)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("base_lr", peak_lr) / peak_lr if peak_lr > 0 else lr
