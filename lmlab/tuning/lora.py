"""LoRA (Hu et al. 2021): a frozen linear layer ``W`` plus a trained low-rank update,
``y = W x + scale * B A x`` with ``A (r, in)``, ``B (out, r)``, ``scale = alpha / r``
(rsLoRA, Kalajdzievski 2023: ``alpha / sqrt(r)``).

A :class:`LoraDelta` is attached to the adapted layer as its child ``lora`` and a forward hook
adds its update to the layer's output, so the layer keeps its class and parameter names.
One delta may hold several slices of a fused layer (``q`` and ``v`` of ``attn.qkv``), each
with its own ``A`` and ``B``, updating only its rows of the output. As PEFT does, ``A`` starts
Kaiming-uniform and ``B`` at zero (the model starts as the base), merging adds ``scale * B A``
into the weight rows (merging again does nothing; unmerging subtracts it), and a disabled or
merged delta adds nothing.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.nn.linear import linear
from lmlab.tuning.module import TuningModule
from lmlab.tuning.options import TuningOptions
from lmlab.tuning.targets import Target, select_targets


class LoraDelta(TuningModule):
    """The low-rank update of one linear layer: per slice ``part`` (rows ``[start, stop)``),
    ``A[part] (r, in)`` and ``B[part] (stop - start, r)``."""

    def __init__(self, in_features: int, slices: list[tuple[str, int, int]], r: int, scale: float,
                 dropout: float = 0.0):
        super().__init__()
        self.slices = list(slices)
        self.r, self.scale = r, scale
        self.A = nn.ParameterDict({p: nn.Parameter(torch.empty(r, in_features)) for p, _, _ in slices})
        self.B = nn.ParameterDict({p: nn.Parameter(torch.zeros(b - a, r)) for p, a, b in slices})
        for a in self.A.values():
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # PEFT's (and nn.Linear's) init of A
        self.drop = nn.Dropout(dropout) if dropout > 0 else None
        self.merged = False

    def delta_weight(self, part: str) -> torch.Tensor:
        """Return ``scale * B A`` of slice ``part``: ``(rows, in)``."""
        return (self.B[part] @ self.A[part]) * self.scale

    def add_to(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return the layer output ``y`` plus the update of input ``x``."""
        if self.drop is not None:
            x = self.drop(x)
        parts = [p for p, _, _ in self.slices]
        a = self.A[parts[0]] if len(parts) == 1 else torch.cat([self.A[p] for p in parts])
        h = linear(x, a) * self.scale  # (..., n_slices * r): one product for all slices
        if len(parts) == 1 and self.slices[0][1] == 0 and self.slices[0][2] == y.shape[-1]:
            return y + linear(h, self.B[parts[0]])
        pieces, at = [], 0
        for i, (p, start, stop) in enumerate(self.slices):
            if start > at:
                pieces.append(y[..., at:start])
            pieces.append(y[..., start:stop] + linear(h[..., i * self.r:(i + 1) * self.r], self.B[p]))
            at = stop
        if at < y.shape[-1]:
            pieces.append(y[..., at:])
        return torch.cat(pieces, dim=-1)


def _lora_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    lora = module.lora
    if not lora.enabled or lora.merged:
        return output
    return lora.add_to(inputs[0], output)


def apply_lora(model: nn.Module, opts: TuningOptions) -> tuple[list[str], list]:
    """Attach a :class:`LoraDelta` to every layer that ``opts.targets`` select; return the target
    names and the hook handles. A rank larger than a slice allows raises LmlabError."""
    targets = select_targets(model, opts.targets)
    by_layer: dict[str, list[Target]] = {}
    for t in targets:
        limit = min(t.linear.in_features, t.stop - t.start)
        if opts.r > limit:
            raise LmlabError(f"LoRA rank r={opts.r} is larger than {t.name} allows ({t.linear.in_features} "
                             f"inputs, {t.stop - t.start} outputs: at most r={limit}); lower r")
        if hasattr(t.linear, "lora"):
            raise LmlabError(f"{t.layer} already has a LoRA; apply tuning once per model")
        by_layer.setdefault(t.layer, []).append(t)
    handles = []
    for ts in by_layer.values():
        lin = ts[0].linear
        w = lin.weight
        delta = LoraDelta(lin.in_features, [(t.part, t.start, t.stop) for t in ts], opts.r, opts.lora_scale,
                          opts.dropout).to(device=w.device, dtype=w.dtype if w.is_floating_point() else None)
        lin.lora = delta
        handles.append(lin.register_forward_hook(_lora_hook))
    return [t.name for t in targets], handles


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Return ``(name, layer)`` of every linear layer of ``model`` that carries a LoRA."""
    return [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, "lora", None), LoraDelta)]


def _check_mergeable(name: str, w: torch.Tensor) -> None:
    if not w.is_floating_point():
        raise LmlabError(f"{name} holds {str(w.dtype)[6:]} weights (a quantised base): LoRA cannot be merged "
                         "into them; keep the adapter unmerged, or merge into the floating-point base")
    if w.is_inference():
        raise LmlabError(f"{name} holds inference-mode tensors (an exported, read-only base): they cannot be "
                         "changed in place; load the base normally to merge")


def merge_lora(model: nn.Module) -> int:
    """Add every LoRA update into its layer's weight rows; return how many layers were merged
    (0 when all already were: merging is idempotent, as in PEFT)."""
    merged = 0
    shared: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(p), []).append(n)
    for name, lin in lora_layers(model):
        if lin.lora.merged:
            continue
        _check_mergeable(name, lin.weight)
        if len(shared.get(id(lin.weight), [])) > 1:
            others = ", ".join(n for n in shared[id(lin.weight)] if n != name + ".weight")
            raise LmlabError(f"{name}.weight is tied to {others}: merging would change both; keep this LoRA "
                             "unmerged, or leave the tied layer out of the targets")
        with torch.no_grad():
            for p, a, b in lin.lora.slices:
                lin.weight[a:b] += lin.lora.delta_weight(p).to(lin.weight.dtype)
        lin.lora.merged = True
        merged += 1
    return merged


def unmerge_lora(model: nn.Module) -> int:
    """Subtract every merged LoRA update from its layer's weight; return how many layers were
    unmerged (0 when none was merged)."""
    count = 0
    for _, lin in lora_layers(model):
        if not lin.lora.merged:
            continue
        with torch.no_grad():
            for p, a, b in lin.lora.slices:
                lin.weight[a:b] -= lin.lora.delta_weight(p).to(lin.weight.dtype)
        lin.lora.merged = False
        count += 1
    return count
