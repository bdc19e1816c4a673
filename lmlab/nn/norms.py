"""Normalisation layers: LayerNorm (with or without bias) and RMSNorm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension with an optional bias (GPT-2 uses one)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` normalised to zero mean, unit variance, then scaled and shifted."""
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), as in LLaMA.

    The statistic is computed in fp32 and the result cast back to the input dtype
    before the gain is applied, exactly like Hugging Face's ``LlamaRMSNorm``, so bf16
    activations keep full-precision normalisation.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``weight * x / sqrt(mean(x^2) + eps)`` in the dtype of ``x``."""
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            if torch.is_grad_enabled() or not x.is_cpu:  # GPUs have a fused rms_norm kernel
                return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
            # F.rms_norm's CPU arithmetic in its order (the same bits), with the width and eps as 0-dim
            # tensors: on a decoding step's one row, the ~20 dispatches of F.rms_norm's CPU composite
            # (wrapping its Python scalars among them) cost more than the arithmetic (a cached MLA
            # decoding step, 17 norms: 1.08-1.11x faster). addcdiv gives eps + sum_sq / width.
            sum_sq = (x * x).sum(-1, keepdim=True)
            inv_rms = torch.addcdiv(_constant(self.eps), sum_sq, _constant(x.shape[-1])).rsqrt_()
            return x * inv_rms * self.weight
        return self.weight * F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)


_CONSTANTS: dict[float, torch.Tensor] = {}


def _constant(value: float) -> torch.Tensor:
    """Return ``value`` as a 0-dim fp32 CPU tensor, made once per value."""
    t = _CONSTANTS.get(value)
    if t is None:
        with torch.inference_mode(False):  # a plain tensor, usable in and out of inference mode
            t = _CONSTANTS[value] = torch.tensor(float(value), dtype=torch.float32, device="cpu")
    return t


def build_norm(kind: str, dim: int, eps: float, bias: bool = True) -> nn.Module:
    """Return a ``'layernorm'`` or ``'rmsnorm'`` module of width ``dim``."""
    if kind == "layernorm":
        return LayerNorm(dim, eps, bias)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps)
    raise ValueError(f"unknown norm {kind!r}")
