"""What lmlab shows people: progress bars with throughput, and number formats.

``LMLAB_PROGRESS=0`` turns every bar off (the tests set it).
"""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress(iterable=None, *, total: int | float | None = None, desc: str | None = None,
             unit: str = "it", unit_scale: bool = False, disable: bool | None = None, **kwargs) -> tqdm:
    """Return a tqdm progress bar showing throughput; ``LMLAB_PROGRESS=0`` turns bars off."""
    if disable is None:
        disable = os.environ.get("LMLAB_PROGRESS", "") == "0"
    return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale,
                disable=disable, dynamic_ncols=True, **kwargs)


def human(x: float) -> str:
    """Format a count with a K/M/B/T suffix and 3 significant digits (``124M`` parameters, ``7B``)."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def si(x: float, unit: str = "") -> str:
    """Format a quantity with an SI prefix (k, M, G, T, P, E) and 3 significant digits (``1.2 TFLOP/s``)."""
    sep = " " if unit else ""
    for div, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{sep}{prefix}{unit}"
    return f"{x:.3g}{sep}{unit}"


def human_bytes(n: float) -> str:
    """Format a byte count with a binary prefix and 3 significant digits (``16 GiB``, ``512 KiB``)."""
    for div, prefix in ((2**50, "Pi"), (2**40, "Ti"), (2**30, "Gi"), (2**20, "Mi"), (2**10, "Ki")):
        if abs(n) >= div:
            return f"{n / div:.3g} {prefix}B"
    return f"{n:.3g} B"


def short(v: float) -> str:
    """Format a fitted constant in 4 significant digits, in exponent form when very small or large."""
    return f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.4e}"
