"""Linear layers whose fp32 CPU matmuls run on oneDNN instead of the BLAS.

PyTorch sends fp32 CPU matmuls to its BLAS (MKL in the x86 wheels) and only bf16/fp16
ones to oneDNN. MKL picks its kernels by CPU vendor: on AMD EPYC (Zen 5, AVX-512) its
sgemm runs at about 180 GFLOP/s on 2 cores where oneDNN's fp32 matmul, which picks by
instruction set, runs at 280-370 over a layer's forward and backward
(``benchmarks/bench_matmul.py``). Both are IEEE fp32 with fp32 accumulation; only the
summation order differs (relative errors of about 1e-6 against float64 for both).

:func:`linear` computes ``x @ weight.T + bias``. On an x86 CPU in fp32 outside
autocast, for products of at least :data:`ONEDNN_MIN_MACS` multiply-adds, it runs the
forward (and, in training, both backward products) on oneDNN
(``torch.ops.mkldnn._linear_pointwise``, the kernel ``torch.compile`` emits for CPU
linears). Everything else (small products, GPUs, bf16, ARM, torch.compile graphs) takes
``F.linear`` unchanged. ``LMLAB_CPU_MATMUL=aten`` turns the oneDNN route off;
``=onednn`` (the default on x86) keeps it on.
"""

from __future__ import annotations

import math
import os
import platform

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import register_flop_formula

from lmlab.errors import LmlabError

_ONEDNN_LINEAR = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")

if _ONEDNN_LINEAR is not None:  # so torch.utils.flop_counter (MFU, profiles) counts these matmuls too

    @register_flop_formula(_ONEDNN_LINEAR)
    def _onednn_linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * math.prod(x_shape[:-1]) * x_shape[-1] * w_shape[0]


def cpu_matmul_backend() -> str:
    """Return ``'onednn'`` or ``'aten'``: which library runs large fp32 CPU matmuls.

    Read from ``LMLAB_CPU_MATMUL`` (``onednn``, ``aten`` or ``auto``); ``auto`` (the
    default) is oneDNN on x86 CPUs where this torch build has it, else aten (the BLAS).
    """
    want = os.environ.get("LMLAB_CPU_MATMUL", "auto").strip().lower() or "auto"
    if want not in ("auto", "onednn", "aten"):
        raise LmlabError(f"LMLAB_CPU_MATMUL={want!r} is not a choice; set it to auto, onednn or aten")
    available = _ONEDNN_LINEAR is not None and torch.backends.mkldnn.is_available()
    if want == "aten" or not available:
        return "aten"
    if want == "onednn":
        return "onednn"
    return "onednn" if _X86 else "aten"


# Below about 4M multiply-adds oneDNN's per-call overhead (~20 us) outweighs its faster kernels.
ONEDNN_MIN_MACS = 1 << 22
# Computing a wide weight gradient transposed and laying it back pays off from this many rows.
WIDE_GRAD_MIN_ROWS = 256


def uses_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when ``x @ weight.T`` should run on oneDNN (see the module docstring)."""
    return (
        x.device.type == "cpu"
        and x.numel() * weight.shape[0] >= ONEDNN_MIN_MACS
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and cpu_matmul_backend() == "onednn"
    )


def mm_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``a @ b.T (+ bias)`` for 2-D ``a (M, K)`` and ``b (N, K)`` (any strides), on oneDNN."""
    return _ONEDNN_LINEAR(a, b, bias, "none", [], "")


Blocks = torch.Tensor | list[torch.Tensor]


def weight_grad(grad_out: Blocks, x: Blocks) -> torch.Tensor:
    """Return ``grad_out.T @ x``, the weight gradient ``(N, K)`` (contiguous), on oneDNN.

    Lists of row blocks (``grad_out[i] (M_i, N)``, ``x[i] (M_i, K)``) are summed over.
    oneDNN is fastest when the smaller side of the product is its row dimension, so for
    wide outputs over many rows ``x.T @ grad_out`` is computed and laid back (1.5-2.8x
    faster than the other orientation for a vocabulary-wide output layer).
    """
    grads = grad_out if isinstance(grad_out, list) else [grad_out]
    xs = x if isinstance(x, list) else [x]
    rows = sum(g.shape[0] for g in grads)
    wide = grads[0].shape[1] > xs[0].shape[1] and rows >= WIDE_GRAD_MIN_ROWS
    total = None
    for g, xi in zip(grads, xs, strict=True):
        part = mm_nt(xi.t(), g.t()) if wide else mm_nt(g.t(), xi.t())
        total = part if total is None else total.add_(part)
    return total.t().contiguous() if wide else total


class OneDnnLinear(torch.autograd.Function):
    """``x (M, K) @ weight (N, K).T + bias`` with forward and backward on oneDNN (fp32, CPU)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return mm_nt(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        # gradients can arrive expanded (stride 0, e.g. from .sum()), which oneDNN reads very slowly
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = mm_nt(grad, weight.t())
        if ctx.needs_input_grad[1]:
            grad_w = weight_grad(grad, x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``x @ weight.T + bias`` for ``x (..., K)``: ``F.linear``'s result, on oneDNN when
    :func:`uses_onednn` says so."""
    if not uses_onednn(x, weight):
        return F.linear(x, weight, bias)
    lead = x.shape[:-1]
    flat, weight = x.reshape(-1, x.shape[-1]).contiguous(), weight.contiguous()
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or
                                    (bias is not None and bias.requires_grad)):
        out = OneDnnLinear.apply(flat, weight, bias)
    else:
        out = mm_nt(flat, weight, bias)
    return out.reshape(*lead, weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, init and state-dict keys) computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x @ weight.T + bias``."""
        return linear(x, self.weight, self.bias)
