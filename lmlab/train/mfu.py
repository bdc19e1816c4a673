"""Model FLOPs utilisation: the formula and the peak FLOP/s it divides by."""

from __future__ import annotations

import math
import os
import time

import torch

from lmlab.device import _DTYPES, accelerator_peak, resolve_precision
from lmlab.errors import LmlabError
from lmlab.nn import linear as nn_linear


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float) -> float:
    """Return model FLOPs utilisation: ``flops_per_token * tokens_per_s / peak_flops`` (a fraction).

    ``flops_per_token`` are training FLOPs (forward + backward) per token, ``tokens_per_s`` the
    measured throughput and ``peak_flops`` the peak FLOP/s of the hardware it ran on (summed
    over devices). Non-positive or non-finite inputs raise LmlabError.
    """
    for name, value in (("flops per token", flops_per_token), ("tokens/s", tokens_per_s),
                        ("peak FLOP/s", peak_flops)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value <= 0:
            raise LmlabError(f"{name} must be a positive number, got {value!r}")
    return float(flops_per_token) * float(tokens_per_s) / float(peak_flops)


_PEAK_CACHE: dict[tuple[str, str], float] = {}


def measure_matmul_flops(
    device: torch.device, precision: str, size: int = 1024, seconds: float = 0.3
) -> float:
    """Measure the FLOP/s of square ``size`` matmuls at ``precision`` on ``device`` for about ``seconds``.

    Returns FLOP/s (2 n^3 per matmul). Used as the CPU peak for MFU, since CPU data
    sheets say little about what PyTorch reaches on a given machine. The matmuls run
    through :func:`lmlab.nn.linear.linear`, so they take the same kernels as the models'
    layers (oneDNN for fp32 on x86 CPUs).
    """
    dtype = _DTYPES[precision]
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(2):
        nn_linear.linear(a, b)
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while True:
        nn_linear.linear(a, b)
        n += 1
        if n % 4 == 0:
            _sync(device)
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                return 2.0 * size**3 * n / elapsed


def peak_flops(device: torch.device, precision: str) -> float:
    """Return the peak FLOP/s used as the MFU denominator for ``device`` at ``precision``.

    ``LMLAB_PEAK_FLOPS`` (a number) overrides. GPUs use a data-sheet table (a matmul
    measurement for unknown models); CPUs and MPS use a short matmul measurement,
    cached per process.
    """
    env = os.environ.get("LMLAB_PEAK_FLOPS")
    if env:
        try:
            return float(env)
        except ValueError:
            raise LmlabError(
                f"LMLAB_PEAK_FLOPS={env!r} is not a number; set it to FLOP/s, e.g. 2e11"
            ) from None
    precision = resolve_precision(device, precision) if precision == "auto" else precision
    key = (str(device), precision)
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    peak = 0.0
    if device.type == "cuda":
        peak = accelerator_peak(torch.cuda.get_device_name(device), precision)
    if peak <= 0.0:
        peak = measure_matmul_flops(device, precision)
    _PEAK_CACHE[key] = peak
    return peak


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
