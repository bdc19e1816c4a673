"""One device and precision setting for the whole lab, plus model-FLOPs-utilisation helpers.

``--device auto`` picks CUDA, then MPS, then the CPU. ``--precision auto`` picks bf16
autocast where the hardware runs bf16 matmuls natively (recent NVIDIA GPUs, CPUs with
AVX512-BF16 or AMX), else fp32. fp16 autocast pairs with a gradient scaler on CUDA.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from typing import Literal

import torch

from lmlab.errors import LmlabError

Precision = Literal["auto", "fp32", "bf16", "fp16"]
DeviceName = Literal["auto", "cpu", "cuda", "mps"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Dense peak FLOP/s (no structured sparsity) of common accelerators by precision, from vendor
# data sheets: the MFU denominator in training (matched by regex in the CUDA device name) and
# the names `lmlab scaling flops --peak-flops` takes ("h100-sxm-bf16", see PEAK_FLOPS).
# Insertion order is match order: the H100 PCIe before the H100 SXM.
ACCELERATORS: dict[str, tuple[str | None, dict[str, float]]] = {
    "h100-pcie": (r"\bH100\b.*\bPCIe\b", {"bf16": 756e12, "fp16": 756e12}),
    "h100-sxm": (r"\bH100\b", {"bf16": 989e12, "fp16": 989e12, "fp8": 1979e12, "tf32": 494.7e12,
                               "fp32": 67e12}),
    "h200": (r"\bH200\b", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    "a100": (r"\bA100\b", {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
    "a10g": (r"\bA10G\b", {"bf16": 125e12, "fp16": 125e12, "fp32": 31.2e12}),
    "l4": (r"\bL4\b", {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12}),
    "v100": (r"\bV100\b", {"fp16": 125e12, "fp32": 15.7e12}),
    "t4": (r"\bT4\b", {"fp16": 65e12, "fp32": 8.1e12}),
    "rtx4090": (r"\b4090\b", {"bf16": 165.2e12, "fp16": 165.2e12, "fp32": 82.6e12}),
    "rtx3090": (r"\b3090\b", {"bf16": 71e12, "fp16": 71e12, "fp32": 35.6e12}),
    "mi300x": (r"\bMI300X\b", {"bf16": 1307.4e12, "fp16": 1307.4e12}),
    "tpu-v4": (None, {"bf16": 275e12}),
    "tpu-v5e": (None, {"bf16": 197e12}),
    "tpu-v5p": (None, {"bf16": 459e12}),
}
PEAK_FLOPS: dict[str, float] = {f"{name}-{precision}": flops for name, (_, table) in ACCELERATORS.items()
                                for precision, flops in table.items()}


def accelerator_peak(device_name: str, precision: str) -> float:
    """Return the data-sheet peak FLOP/s of the accelerator named ``device_name`` (as
    ``torch.cuda.get_device_name`` spells it) at ``precision``, or 0.0 when not in the table."""
    for pattern, table in ACCELERATORS.values():
        if pattern is not None and re.search(pattern, device_name):
            return table.get(precision, 0.0)
    return 0.0


def resolve_device(name: str = "auto") -> torch.device:
    """Return the torch device for ``'auto'|'cpu'|'cuda'|'cuda:N'|'mps'``.

    'auto' prefers CUDA, then Apple MPS, then the CPU. Under torchrun, CUDA means the
    GPU of this process's LOCAL_RANK. Raises LmlabError when the device is unavailable.
    """
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LmlabError(
                f"--device {name} was asked for but this torch build sees no CUDA GPU; "
                "use --device cpu (or auto)"
            )
        if name == "cuda":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device(name)
    if name == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise LmlabError(
                "--device mps was asked for but MPS is not available; use --device cpu (or auto)"
            )
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise LmlabError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")


def bf16_supported(device: torch.device) -> bool:
    """Return True when ``device`` runs bf16 matmuls natively (fast), not merely emulated."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        cpu = torch.cpu
        avx512_bf16 = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
        amx = getattr(cpu, "_is_amx_tile_supported", lambda: False)()
        return bool(avx512_bf16 or amx) and torch.backends.mkldnn.is_available()
    return False


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """Return the concrete precision ('fp32', 'bf16' or 'fp16') for ``precision`` on ``device``.

    'auto' is bf16 where :func:`bf16_supported`, else fp32. Raises LmlabError for an
    unknown precision.
    """
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if precision not in _DTYPES:
        raise LmlabError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    return precision


def autocast_dtype(precision: str) -> torch.dtype:
    """Return the torch dtype that autocast uses for a concrete precision name."""
    return _DTYPES[precision]


@contextlib.contextmanager
def autocast(device: torch.device, precision: str = "auto") -> Iterator[None]:
    """Context manager running the enclosed forward pass at ``precision`` on ``device``.

    fp32 runs as is; bf16/fp16 use ``torch.autocast`` (matmuls in low precision,
    reductions such as softmax and losses in fp32). Yields nothing.
    """
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=_DTYPES[precision]):
        yield


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Return a GradScaler: active for fp16 on CUDA, a no-op pass-through otherwise."""
    enabled = precision == "fp16" and device.type == "cuda"
    return torch.amp.GradScaler(device.type if enabled else "cpu", enabled=enabled)


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
    from lmlab.nn.linear import linear

    dtype = _DTYPES[precision]
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(2):
        linear(a, b)
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while True:
        linear(a, b)
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


def mfu(flops_per_token: float, tokens_per_s: float, peak: float) -> float:
    """Return model FLOPs utilisation: achieved FLOP/s (flops_per_token * tokens_per_s) / peak."""
    return flops_per_token * tokens_per_s / peak if peak > 0 else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
