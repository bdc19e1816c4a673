"""Run logging: ``metrics.jsonl`` always, TensorBoard when installed."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from lmlab.fileio import write_text


def _clean(v: Any) -> Any:
    """Make a metric JSON-safe: tensors/numpy scalars to floats, NaN/inf to strings."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class RunLogger:
    """Append one JSON object per logged step to ``run_dir/metrics.jsonl``.

    Also writes TensorBoard scalars under ``run_dir/tb`` when ``tensorboard`` is
    installed (``tensorboard=None`` means "if available"). When resuming from
    ``resume_step``, lines logged after that step by the interrupted run are dropped so
    the file reads as one uninterrupted run.
    """

    def __init__(self, run_dir: str | os.PathLike, *, resume_step: int | None = None,
                 tensorboard: bool | None = None, filename: str = "metrics.jsonl"):
        self.path = Path(run_dir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            write_text(self.path, "".join(line + "\n" for line in kept))
        self._f = open(self.path, "a", encoding="utf-8")
        self._t0 = time.time()
        self._tb = None
        if tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except ImportError:
                if tensorboard:
                    raise
                self._tb = None

    def log(self, step: int, **metrics: Any) -> dict[str, Any]:
        """Write ``{"step": step, **metrics, "time": seconds since start}``; return the record."""
        record = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        record.setdefault("time", round(time.time() - self._t0, 3))
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
        return record

    def close(self) -> None:
        """Flush and close the files."""
        self._f.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(run_dir: str | os.PathLike, filename: str = "metrics.jsonl") -> list[dict[str, Any]]:
    """Return the records of a run's ``metrics.jsonl`` (empty list if absent)."""
    path = Path(run_dir) / filename
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
