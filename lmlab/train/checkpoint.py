"""Resumable checkpoints in a run directory, written so a failed save never damages the last good one.

Layout::

    RUN/model.safetensors            the latest weights (a hard link into state/, or a copy)
    RUN/state/latest.json            {"step", "dir", "files": {name: {"bytes", "sha256"}}}
    RUN/state/step-000020-<id>/      model.safetensors, optimizer.pt, trainer.json

A save writes a new ``step-N`` folder, then atomically replaces ``latest.json``, then
deletes older folders. A crash or a full disk before the ``latest.json`` rename leaves
the previous checkpoint as it was (the next save clears what a killed one left behind).
Loading checks sizes and SHA-256 sums, so a damaged file is reported, never silently loaded.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.errors import LmlabError
from lmlab.fileio import atomic_path, write_json

STATE_DIR = "state"
LATEST = "latest.json"
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
TRAINER = "trainer.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint: its step, weights file, optimiser state and trainer state."""

    step: int
    weights_path: Path
    optimizer_state: dict
    trainer_state: dict[str, Any]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    """Return the Python, numpy (global) and torch (CPU and CUDA) RNG states as JSON-ready values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            *(v.item() if hasattr(v, "item") else v for v in np_state[2:]),
        ],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [
            base64.b64encode(s.numpy().tobytes()).decode("ascii") for s in torch.cuda.get_rng_state_all()
        ]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore RNG states saved by :func:`rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state["numpy"]
    np.random.set_state((npy[0], np.asarray(npy[1], dtype=np.uint32), *npy[2:]))

    def _tensor(b64: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(b64)), dtype=torch.uint8).clone()

    torch.set_rng_state(_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [_tensor(s) for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def latest_step(run_dir: str | os.PathLike) -> int | None:
    """Return the step of the run's latest checkpoint, or None when it has none."""
    path = Path(run_dir) / STATE_DIR / LATEST
    if not path.is_file():
        return None
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["step"])
    except (ValueError, KeyError, TypeError):
        raise LmlabError(f"{path} is damaged; delete {path.parent} to start over, or restore it") from None


class SaveError(LmlabError):
    """A checkpoint could not be written; what was half-written is removed and the previous one kept."""


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    *,
    write_weights: Callable[[Path], None],
    optimizer_state: dict,
    trainer_state: dict[str, Any],
    weights_bytes: int | None = None,
) -> Path:
    """Write a checkpoint for ``step`` into ``run_dir``; return its folder.

    ``write_weights(path)`` writes the model weights (safetensors) to ``path``; ``weights_bytes``
    (their size, if known) goes into the estimate of the space a save needs. Raises
    :class:`SaveError` if writing fails in any way (disk full, permissions, an error of the
    weights or optimizer writer), naming the step of the checkpoint kept and the space needed;
    the half-written folder is removed, and the previous checkpoint and ``RUN/model.safetensors``
    are unchanged.
    """
    run_dir = Path(run_dir)
    state_dir = run_dir / STATE_DIR
    name = f"step-{step:06d}-{uuid.uuid4().hex[:8]}"  # unique, so a re-save of a step never collides
    folder = state_dir / name
    previous = latest_step(run_dir)
    tmp = state_dir / f".{name}.tmp"
    try:
        tmp.mkdir(parents=True)
        write_weights(tmp / WEIGHTS)
        torch.save(optimizer_state, tmp / OPTIMIZER)
        (tmp / TRAINER).write_text(json.dumps({"step": step, **trainer_state}, indent=1), encoding="utf-8")
        files = {}
        for f in (WEIGHTS, OPTIMIZER, TRAINER):
            with open(tmp / f, "rb+") as fh:
                os.fsync(fh.fileno())
            files[f] = {"bytes": (tmp / f).stat().st_size, "sha256": _sha256(tmp / f)}
        os.replace(tmp, folder)
        write_json(state_dir / LATEST, {"step": step, "dir": name, "files": files})
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        if not isinstance(e, Exception):  # Ctrl-C, SystemExit: cleaned up, carry on stopping
            raise
        needed = (weights_bytes or 0) + _tensor_bytes(optimizer_state) + (1 << 16)
        raise SaveError(_save_failed(e, step, state_dir, previous, needed)) from None
    try:
        _publish_weights(folder / WEIGHTS, run_dir / WEIGHTS)
    except OSError as e:
        raise SaveError(
            f"saved the step-{step} checkpoint in {folder} but could not update "
            f"{run_dir / WEIGHTS} ({e.strerror or e}); free disk space and resume with --resume"
        ) from None
    for old in state_dir.iterdir():
        if old.name != name and old.name.startswith(("step-", ".step-")):
            shutil.rmtree(old, ignore_errors=True)
    # temporary files of writes cut short by a killed process (kill -9, power loss)
    for stale in [*state_dir.glob(f".{LATEST}.*.tmp"), *run_dir.glob(f".{WEIGHTS}.*.tmp")]:
        stale.unlink(missing_ok=True)
    return folder


def _tensor_bytes(obj: Any) -> int:
    """Total bytes of the tensors in a nested dict/list (an optimizer state)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _save_failed(e: Exception, step: int, state_dir: Path, previous: int | None, needed: int) -> str:
    """The one-line message of a failed save: why, the space it needs, what is kept, what to do."""
    if isinstance(e, OSError):
        why = e.strerror or str(e)
    else:  # safetensors and torch's zip writer report a full disk as their own error types
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
        why = f"{type(e).__name__}: {first[:200]}"
    space = f"it needs about {_size(needed)}"
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(state_dir if state_dir.exists() else state_dir.parent).free
        space += f", {_size(free)} free"
    if previous is not None:
        kept = f"the checkpoint of step {previous} is kept intact; free space and continue with --resume"
    else:
        kept = "no earlier checkpoint exists; free space (or fix permissions) and run again"
    return f"could not save the step-{step} checkpoint in {state_dir} ({why}); {space}; {kept}"


def _publish_weights(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` hold ``src``'s bytes: a hard link where possible, else a copy."""
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def load_checkpoint(run_dir: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load and verify the latest checkpoint of ``run_dir``.

    Raises LmlabError when there is none, or when a file is missing or its size or
    SHA-256 differs from ``latest.json`` (a damaged checkpoint is never loaded).
    """
    run_dir = Path(run_dir)
    state_dir = run_dir / STATE_DIR
    step = latest_step(run_dir)
    if step is None:
        raise LmlabError(
            f"{run_dir} has no checkpoint to resume ({state_dir / LATEST} is missing); "
            "drop --resume to start a new run"
        )
    latest = json.loads((state_dir / LATEST).read_text(encoding="utf-8"))
    folder = state_dir / latest["dir"]
    for fname, info in latest["files"].items():
        path = folder / fname
        if not path.is_file() or path.stat().st_size != info["bytes"] or _sha256(path) != info["sha256"]:
            raise LmlabError(
                f"checkpoint file {path} is missing or damaged (size or checksum differs from "
                f"{LATEST}); restore it, or start over without --resume"
            )
    trainer_state = json.loads((folder / TRAINER).read_text(encoding="utf-8"))
    optimizer_state = torch.load(folder / OPTIMIZER, map_location=map_location, weights_only=True)
    return Checkpoint(
        step=step, weights_path=folder / WEIGHTS, optimizer_state=optimizer_state, trainer_state=trainer_state
    )
