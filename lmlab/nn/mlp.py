"""Position-wise feed-forward blocks: the dense MLP (GPT-2, BERT, T5 v1.0) and the gated one
(SwiGLU in LLaMA, GEGLU in T5 v1.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.nn.linear import Linear

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    """Apply the activation ``name``: exact GELU (BERT, BART), tanh-approximated GELU (GPT-2,
    T5 v1.1's "gelu_new"), ReLU (Vaswani, T5 v1.0) or SiLU (LLaMA's gate)."""
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu(x)
    if name == "silu":
        return F.silu(x)
    raise ValueError(f"unknown activation {name!r}; use one of {', '.join(ACTIVATIONS)}")


class MLP(nn.Module):
    """The dense feed-forward block ``proj(act(fc(x)))`` (GPT-2, BERT, BART, Vaswani, T5 v1.0)."""

    def __init__(self, dim: int, hidden: int, bias: bool = True, act: str = "gelu_tanh"):
        super().__init__()
        self.fc = Linear(dim, hidden, bias=bias)
        self.proj = Linear(hidden, dim, bias=bias)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the MLP output, same shape as ``x``."""
        return self.proj(activation(self.act, self.fc(x)))


class SiluGate(torch.autograd.Function):
    """``silu(a) * b`` for ``ab = cat(a, b)`` on the last dimension, with the gradient of ``ab``
    written as one tensor.

    Autograd of ``ab.chunk(2)`` would concatenate the two halves' gradients in backward, an
    extra copy of the widest activation in the model; here each half is written in place.
    """

    @staticmethod
    def forward(ctx, ab: torch.Tensor) -> torch.Tensor:
        a, b = ab.chunk(2, dim=-1)
        ctx.save_for_backward(ab)
        return F.silu(a) * b

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (ab,) = ctx.saved_tensors
        a, b = ab.chunk(2, dim=-1)
        out = torch.empty_like(ab)
        da, db = out.chunk(2, dim=-1)
        sig = torch.sigmoid(a)
        s = torch.mul(a, sig, out=db)  # silu(a), parked in db's memory
        # d silu(a)/da = sig * (1 + a * (1 - sig)) = sig + silu(a) * (1 - sig)
        torch.addcmul(sig, s, 1 - sig, out=da)
        da.mul_(b).mul_(grad)
        db.mul_(grad)
        return out


class GatedMLP(nn.Module):
    """Gated feed-forward block ``w2(act(w1 x) * w3 x)`` (Shazeer 2020): SwiGLU with ``act='silu'``
    (LLaMA), GEGLU with ``act='gelu_tanh'`` (T5 v1.1).

    ``w1`` (gate) and ``w3`` (up) are fused into one Linear ``w13`` whose first
    ``hidden`` output rows are ``w1`` and the last ``hidden`` are ``w3``: one matmul
    instead of two. Hugging Face's ``gate_proj``/``up_proj`` (``wi_0``/``wi_1`` in T5)
    are exactly those halves.
    """

    def __init__(self, dim: int, hidden: int, bias: bool = False, act: str = "silu"):
        super().__init__()
        self.hidden = hidden
        self.act = act
        self.w13 = Linear(dim, 2 * hidden, bias=bias)
        self.w2 = Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the gated MLP output, same shape as ``x``."""
        h = self.w13(x)
        if self.act == "silu" and torch.is_grad_enabled() and h.requires_grad and h.dtype == torch.float32:
            return self.w2(SiluGate.apply(h))
        gate, up = h.chunk(2, dim=-1)
        return self.w2(activation(self.act, gate) * up)


def swiglu_hidden(dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """Return LLaMA's SwiGLU width: ``int(2 * 4 * dim / 3)`` (times a multiplier), rounded up
    to a multiple of ``multiple_of``."""
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)
