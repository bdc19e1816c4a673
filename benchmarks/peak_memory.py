"""Peak memory of a few training steps, measured in a fresh process (Linux), shared by the benchmarks.

A child process builds one mode, resets the kernel's RSS high-water mark just before its first
step (so loading the weights does not count), runs the steps and prints the peak resident-set
growth as JSON; the parent runs it with glibc's mmap threshold pinned, so freed tensors leave the
RSS and the peak follows the live tensors rather than the allocator's high-water mark.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterable
from typing import Any

from lmlab.device import reset_peak_rss, status_mib


def print_peak_growth(step: Callable[[Any], Any], batches: Iterable[Any]) -> None:
    """In the child: run ``step`` on each batch; print its peak RSS growth and peak RSS (MiB) as JSON."""
    reset_peak_rss()
    before = status_mib("VmRSS")
    for b in batches:
        step(b)
    peak = status_mib("VmHWM")
    print(json.dumps({"peak_extra_mib": max(0.0, peak - before), "peak_rss_mib": peak}))


def run_child(cmd: list[str]) -> dict[str, float]:
    """In the parent: run the child command ``cmd``; return its figures rounded to 0.1 MiB."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    child = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return {k: round(v, 1) for k, v in json.loads(child.stdout.strip().splitlines()[-1]).items()}
