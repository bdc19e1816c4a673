"""Run logging: ``metrics.jsonl`` always, TensorBoard when installed."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError
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
    the file reads as one uninterrupted run; a half-written last line (the process was
    killed while writing it) is dropped with a warning.
    """

    def __init__(self, run_dir: str | os.PathLike, *, resume_step: int | None = None,
                 tensorboard: bool | None = None, filename: str = "metrics.jsonl"):
        self.path = Path(run_dir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            kept = [json.dumps(r) for r in _read_records(self.path, warn=True)
                    if r.get("step", 0) <= resume_step]
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


def _read_records(path: Path, warn: bool = False) -> list[dict[str, Any]]:
    """Parse a JSON-lines metrics file; a half-written last line is skipped (with a warning if ``warn``).

    Raises LmlabError naming the line when an earlier line is not a JSON object.
    """
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif lineno == len(lines) and not text.endswith("\n"):  # torn by a crash mid-write
            if warn:
                print(f"warning: {path}: dropped a half-written last line ({len(line)} chars) left by an "
                      "interrupted run", file=sys.stderr)
        else:
            raise LmlabError(f"{path}:{lineno} is not a JSON object; fix or delete that line")
    return records


def read_metrics(run_dir: str | os.PathLike, filename: str = "metrics.jsonl") -> list[dict[str, Any]]:
    """Return the records of a run's ``metrics.jsonl`` (empty list if absent).

    A half-written last line (from a run killed mid-write) is skipped.
    """
    path = Path(run_dir) / filename
    if not path.exists():
        return []
    return _read_records(path)
