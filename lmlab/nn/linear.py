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
``F.linear`` unchanged.

Which route is faster depends on the machine: on the AMD EPYC above oneDNN is 1.6-2x
faster, on an Intel Xeon with AVX-512 and AMX MKL was (a 1.21x faster training step than
oneDNN's 1.09x against HF). So ``LMLAB_CPU_MATMUL=auto`` (the default) measures: on first
use it times a block's linear and an output layer, forward and both backward products, on
both routes (:func:`calibrate`, a few tenths of a second) and takes the faster. The choice
is cached per CPU model, instruction set, torch version and thread count in
``lmlab.fileio.cache_home()/cpu_matmul/`` (``$LMLAB_CACHE_DIR`` moves it; a damaged file is
measured again) and read once per process. ``LMLAB_CPU_MATMUL=onednn`` or ``=aten`` forces
a route; the variable is read at every call, so benchmarks and tests can switch routes at run
time (:func:`reset_matmul_choice` forgets the process's auto choice).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import threading
import time
from collections.abc import Iterator
from pathlib import Path

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


def onednn_available() -> bool:
    """True when this torch build can run matmuls on oneDNN (``LMLAB_CPU_MATMUL=onednn``)."""
    return _ONEDNN_LINEAR is not None and torch.backends.mkldnn.is_available()


def cpu_matmul_backend() -> str:
    """Return ``'onednn'`` or ``'aten'``: which library runs large fp32 CPU matmuls.

    Read from ``LMLAB_CPU_MATMUL`` (``onednn``, ``aten`` or ``auto``) at every call; ``auto``
    (the default) is the route :func:`auto_matmul_choice` measured faster on an x86 CPU, and
    aten (the BLAS) elsewhere or where this torch build has no oneDNN.
    """
    want = os.environ.get("LMLAB_CPU_MATMUL", "auto").strip().lower() or "auto"
    if want not in ("auto", "onednn", "aten"):
        raise LmlabError(f"LMLAB_CPU_MATMUL={want!r} is not a choice; set it to auto, onednn or aten")
    if want == "aten" or not onednn_available():
        return "aten"
    if want == "onednn":
        return "onednn"
    return auto_matmul_choice()["route"] if _X86 else "aten"


# (rows, in, out) of the products calibrate() times: a d=256 Transformer block's linears at 2048 tokens
# and a slice of its output layer (benchmarks/bench_matmul.py's shapes)
CALIBRATION_SHAPES = ((2048, 256, 256), (2048, 256, 768), (512, 256, 4096))
CALIBRATION_REPEATS = 2  # timed rounds per route after a warm-up round; the fastest round counts
_AUTO: dict[int, dict] = {}  # auto_matmul_choice() per torch thread count (the key's only variable part)
_AUTO_LOCK = threading.Lock()
_CPU_MODEL: list[str] = []


def _cpu_model() -> str:
    if not _CPU_MODEL:
        model = ""
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                names = (line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
                model = next(names, "")
        except OSError:
            pass
        _CPU_MODEL.append(model or platform.processor() or platform.machine())
    return _CPU_MODEL[0]


def calibration_key() -> str:
    """Return what the auto route is measured and cached per: CPU model and instruction set, torch
    version and torch's thread count."""
    return (f"{_cpu_model()} | {torch.backends.cpu.get_cpu_capability()} | torch {torch.__version__} | "
            f"{torch.get_num_threads()} threads")


def _calibration_path(key: str) -> Path:
    from lmlab.fileio import cache_home

    return cache_home() / "cpu_matmul" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _time_route(route: str) -> float:
    """Seconds that ``route`` takes for the forward and both backward products of each of
    :data:`CALIBRATION_SHAPES` (fp32, current thread count)."""
    gen = torch.Generator().manual_seed(0)
    total = 0.0
    for rows, n_in, n_out in CALIBRATION_SHAPES:
        x, w = torch.randn(rows, n_in, generator=gen), torch.randn(n_out, n_in, generator=gen)
        g = torch.randn(rows, n_out, generator=gen)
        t = time.perf_counter()
        if route == "onednn":
            mm_nt(x, w), mm_nt(g, w.t()), weight_grad(g, x)
        else:
            F.linear(x, w), g @ w, g.t() @ x
        total += time.perf_counter() - t
    return total


def calibrate() -> dict:
    """Time both routes (interleaved, fastest of :data:`CALIBRATION_REPEATS` rounds after a warm-up);
    return ``{"route": the faster, "aten_s": ..., "onednn_s": ...}``."""
    from torch.utils._python_dispatch import _disable_current_modes

    best = {"aten": math.inf, "onednn": math.inf}
    # no_grad, and outside any dispatch mode, so that a FlopCounterMode or profiler does not count these
    with torch.no_grad(), _disable_current_modes():
        for i in range(CALIBRATION_REPEATS + 1):
            for route in best:
                seconds = _time_route(route)
                if i > 0:  # the first round creates oneDNN's primitives and warms the caches
                    best[route] = min(best[route], seconds)
    return {"route": "onednn" if best["onednn"] < best["aten"] else "aten",
            "aten_s": best["aten"], "onednn_s": best["onednn"]}


def auto_matmul_choice() -> dict:
    """Return the route ``LMLAB_CPU_MATMUL=auto`` takes on this machine and how it was found:
    ``{"route", "source": "measured" | "cache", "key", "aten_s", "onednn_s"}``.

    Measured by :func:`calibrate` on first use and cached on disk per :func:`calibration_key`
    (a missing or damaged file is measured again); read from there once per process.
    """
    threads = torch.get_num_threads()
    choice = _AUTO.get(threads)
    if choice is not None:
        return choice
    with _AUTO_LOCK:
        if threads in _AUTO:
            return _AUTO[threads]
        key = calibration_key()
        path = _calibration_path(key)
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            if not (cached["key"] == key and cached["route"] in ("onednn", "aten")):
                raise ValueError("another key or route")
            choice = {**cached, "source": "cache"}
        except (OSError, ValueError, KeyError, TypeError):  # none yet, damaged or foreign: measure
            choice = {"key": key, **calibrate()}
            try:
                from lmlab.fileio import write_json

                write_json(path, choice)
            except OSError:  # a read-only cache dir: measure again next process
                pass
            choice = {**choice, "source": "measured"}
        _AUTO[threads] = choice
        return choice


def reset_matmul_choice() -> None:
    """Forget this process's auto route choices (the next use reads the cache dir again)."""
    with _AUTO_LOCK:
        _AUTO.clear()


# Below about 4M multiply-adds oneDNN's per-call overhead (~20 us) outweighs its faster kernels.
ONEDNN_MIN_MACS = 1 << 22
# Computing a wide weight gradient transposed and laying it back pays off from this many rows.
WIDE_GRAD_MIN_ROWS = 256


def uses_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when ``x @ weight.T`` should run on oneDNN (see the module docstring)."""
    return (
        x.numel() * weight.shape[0] >= ONEDNN_MIN_MACS  # first: the cheapest test, false when decoding
        and x.is_cpu
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
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    if not (weight.is_contiguous() or weight.t().is_contiguous()):  # oneDNN reads either layout at speed
        weight = weight.contiguous()
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or
                                    (bias is not None and bias.requires_grad)):
        out = OneDnnLinear.apply(flat, weight, bias)
    else:
        out = mm_nt(flat, weight, bias)
    return out.reshape(*lead, weight.shape[0])


_PINNED = "_lmlab_layout_pinned"  # set on a model while training_layout() holds it


def _cpu_linear_weights(model: nn.Module) -> list[nn.Parameter]:
    """Return the distinct CPU weight matrices of ``model``'s linear layers (a tied one once)."""
    found: dict[int, nn.Parameter] = {}
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.weight.device.type == "cpu":
            found.setdefault(id(m.weight), m.weight)
    return list(found.values())


def use_gemv_layout(model: nn.Module) -> int:
    """Lay ``model``'s CPU linear weights out column-major (``weight.T`` contiguous); return how
    many weights were moved.

    A decoding step multiplies one row (or a few) by each weight: a matrix-vector product
    that reads the whole weight from memory. The BLAS streams a weight laid out ``(in, out)``
    about 1.5x faster than the usual ``(out, in)`` (``benchmarks/bench_gemv.py``), so
    generation lays an inference model's weights out that way, once: same shapes, values and
    parameters, another memory order. Products of many rows (training, prefill, evaluation)
    run as fast either way on both CPU routes, so the layout is kept. A model with a
    ``decoding_modules()`` method (an encoder-decoder: its decoder and output layer) has only
    those moved; weights already column-major are left alone, and so is a model that is being
    trained (:func:`training_layout`).
    """
    if getattr(model, _PINNED, False):
        return 0
    parts = model.decoding_modules() if hasattr(model, "decoding_modules") else [model]
    moved = 0
    with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable by autograd later
        for part in parts:
            for w in _cpu_linear_weights(part):
                if w.dim() == 2 and w.is_contiguous() and min(w.shape) > 1:
                    w.data = w.data.t().contiguous().t()
                    moved += 1
    return moved


def use_row_major_layout(model: nn.Module) -> int:
    """Lay ``model``'s CPU linear weights out row-major again (contiguous, as ``nn.Linear`` makes
    them), undoing :func:`use_gemv_layout`; return how many weights were moved. Safetensors
    writes only contiguous tensors, so the model writers call this first."""
    moved = 0
    with torch.inference_mode(False), torch.no_grad():
        for w in _cpu_linear_weights(model):
            if not w.is_contiguous():
                w.data = w.data.contiguous()
                moved += 1
    return moved


@contextlib.contextmanager
def training_layout(model: nn.Module) -> Iterator[None]:
    """Keep ``model``'s weights row-major while the block trains it: restore the order that
    generation may have changed, and keep :func:`use_gemv_layout` (generation inside the
    block, e.g. a validation decode) from changing it until the block ends, since an
    optimizer's state is laid out like the parameters it was made for. Yields once."""
    use_row_major_layout(model)
    setattr(model, _PINNED, True)
    try:
        yield
    finally:
        setattr(model, _PINNED, False)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, init and state-dict keys) computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x @ weight.T + bias``."""
        return linear(x, self.weight, self.bias)
