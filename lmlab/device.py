"""One device and precision setting for the whole lab, and the accelerators' peak FLOP/s.

``--device auto`` picks CUDA, then MPS, then the CPU. ``--precision auto`` picks bf16
autocast where the hardware runs bf16 matmuls natively (recent NVIDIA GPUs, CPUs with
AVX512-BF16 or AMX), else fp32. fp16 autocast pairs with a gradient scaler on CUDA.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any, Literal

import torch

from lmlab.errors import LmlabError

DeviceName = Literal["auto", "cpu", "cuda", "mps"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
                "fp16": "float16", "float16": "float16"}

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


def parse_dtype(dtype: Any) -> Any:
    """Return the torch dtype named by ``dtype`` (fp32/bf16/fp16 or float32/...), None for None/'auto'."""
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return None if dtype == "auto" else dtype
    if dtype not in _DTYPES:
        raise LmlabError(f"unknown dtype {dtype!r}; use auto, fp32, bf16 or fp16")
    return getattr(torch, _DTYPE_NAMES[dtype])


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


def set_threads(n: int) -> None:
    """Set PyTorch's CPU thread count; raise LmlabError unless ``n`` is at least 1.

    Small models (seq2seq, emergence) default to one thread: their matrices are small,
    and on a loaded machine extra threads mostly wait on each other (a step measured
    15 ms on one thread and about 1 s on two busy cores).
    """
    if n < 1:
        raise LmlabError(f"--threads must be at least 1, got {n}")
    torch.set_num_threads(n)


def status_mib(field: str) -> float:
    """Return a memory figure (VmRSS, VmHWM) of this process from /proc/self/status, in MiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Reset the kernel's resident-set high-water mark (VmHWM) of this process to its current RSS (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def pin_mmap_threshold(nbytes: int = 131072) -> bool:
    """Make glibc serve allocations of ``nbytes`` or more by mmap, so a freed tensor leaves the
    resident set at once and the RSS follows the live tensors (as ``MALLOC_MMAP_THRESHOLD_`` does
    at process start); return False where that is not possible (not glibc)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, nbytes))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


class PeakMemory:
    """Measure the peak memory a block of code adds on ``device``, in MiB (``with PeakMemory(d) as m:
    ...; m.peak_mib``): on CUDA the caching allocator's peak above what was allocated at the start;
    on a CPU the growth of the resident set's high-water mark over the RSS at the start (Linux, with
    glibc's mmap threshold pinned; ``peak_mib`` is None where /proc cannot tell)."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.peak_mib: float | None = None
        self._base = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device) / 2**20
        elif self.device.type == "cpu":
            try:
                pin_mmap_threshold()
                reset_peak_rss()
                self._base = status_mib("VmRSS")
            except OSError:
                self._base = -1.0
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20 - self._base
        elif self.device.type == "cpu" and self._base >= 0:
            self.peak_mib = max(0.0, status_mib("VmHWM") - self._base)
