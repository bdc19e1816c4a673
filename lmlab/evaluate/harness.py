"""lm-evaluation-harness against a model served by ``lmlab serve``: the path every OpenAI-compatible
client takes, so ``lmlab eval --harness`` measures what lm-eval users get from the server.

:func:`run_harness` starts ``lmlab serve`` on the checkpoint in a child process on a free loopback
port (the server is a capability above this package, reached over HTTP, never imported), waits
for ``/health``, and runs lm-eval's ``local-completions`` model on it with the server's own
tokenizer (``tokenizer_backend=remote``: ``/tokenize``, ``/detokenize``, ``/tokenizer_info``, so no
tokenizer files and no hub). Log-likelihood requests are sent as token ids with ``echo`` and
``logprobs: 1``; ``max_length`` is the model's context, so no request outgrows it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

LM_EVAL = "lm_eval==0.4.13"
INSTALL = "pip install -e '.[harness]' (or '.[dev]')"
SERVED_NAME = "lmlab"
START_TIMEOUT_S = 300.0
_SKIP = {"alias", "name", "sample_len", " ", ""}


@dataclass
class Row:
    """One figure of the results table: task, metric (lm-eval's name, with its filter unless it is
    the default ``none``), value and standard error (None when lm-eval gives none)."""

    task: str
    metric: str
    value: float
    stderr: float | None


@dataclass
class HarnessResult:
    """The table, how many documents each task scored, lm-eval's per-document samples (each with
    ``arguments`` and ``resps``), its full results object, and the model arguments it ran with."""

    rows: list[Row]
    documents: dict[str, int]
    samples: dict[str, list[dict[str, Any]]]
    raw: dict[str, Any]
    model_args: dict[str, Any] = field(default_factory=dict)


def require_lm_eval() -> None:
    """Raise LmlabError with the install command when lm-eval (and its API-model extras) is missing."""
    import importlib.util

    needed = ("lm_eval", "aiohttp", "tenacity", "requests")
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise LmlabError(f"--harness needs lm-evaluation-harness ({LM_EVAL}, API extras); {missing[0]} is "
                         f"not installed: {INSTALL}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@contextlib.contextmanager
def serve_process(ckpt: Path, log: Path, device: str = "auto",
                  timeout_s: float = START_TIMEOUT_S) -> Iterator[str]:
    """Run ``lmlab serve --ckpt CKPT`` on a free loopback port (no API key; its stderr to ``log``)
    until the block ends; yield its base URL once ``/health`` answers 200. LmlabError with the
    server's own error line when it exits first (a checkpoint that does not load, not a decoder,
    no tokenizer)."""
    env = {k: v for k, v in os.environ.items() if k != "LMLAB_API_KEY"}
    port = _free_port()
    cmd = [sys.executable, "-m", "lmlab.cli", "serve", "--ckpt", str(ckpt), "--port", str(port),
           "--device", device, "--served-name", SERVED_NAME]
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_file, env=env)
        try:
            start = time.monotonic()
            while True:
                if proc.poll() is not None:
                    lines = Path(log).read_text().strip().splitlines() or ["it exited without a word"]
                    errors = [ln for ln in lines if ln.startswith("error:")]
                    why = errors[-1][len("error:"):].strip() if errors else lines[-1]
                    raise LmlabError(f"lmlab serve could not serve {ckpt}: {why}")
                with contextlib.suppress(OSError):
                    if _get(url + "/health", timeout=1.0)[0] == 200:
                        break
                if time.monotonic() - start > timeout_s:
                    raise LmlabError(f"lmlab serve on {ckpt} did not answer /health within "
                                     f"{timeout_s:.0f} s; see {log}")
                time.sleep(0.1)
            yield url
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def results_rows(results: dict[str, dict[str, Any]]) -> list[Row]:
    """Return the table rows of lm-eval's ``results`` (``{task: {"metric,filter": value,
    "metric_stderr,filter": stderr, ...}}``), in its order."""
    rows = []
    for task, figures in results.items():
        for key, value in figures.items():
            metric, _, filt = key.partition(",")
            if metric in _SKIP or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            err = figures.get(f"{metric}_stderr,{filt}")
            err = float(err) if isinstance(err, (int, float)) and math.isfinite(err) else None
            name = metric if filt in ("none", "") else f"{metric} ({filt})"
            rows.append(Row(task, name, float(value), err))
    return rows


def results_table(rows: Sequence[Row]) -> str:
    """Return the rows as an aligned text table: task, metric, value, stderr."""
    head = ("task", "metric", "value", "stderr")
    body = [(r.task, r.metric, f"{r.value:.4f}", "" if r.stderr is None else f"{r.stderr:.4f}") for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(4)]
    fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*line) for line in [head, *body])


def run_harness(ckpt: Path, task_names: Sequence[str], out: Path, *, limit: int | None = None,
                device: str = "auto", batch_size: int = 16, num_concurrent: int = 2,
                bootstrap_iters: int = 1000) -> HarnessResult:
    """Evaluate the decoder ``ckpt`` on lmlab's harness tasks through ``lmlab serve``; return the
    result. Writes the tasks (YAML + JSONL) to ``out/tasks`` and the server's log to
    ``out/server.log``. ``limit``: the first N documents of each task; ``bootstrap_iters``:
    resamples for the standard errors lm-eval bootstraps (0: none)."""
    from lmlab.evaluate.harness_tasks import resolve_tasks, write_tasks

    require_lm_eval()
    tasks = resolve_tasks(task_names)
    if limit is not None and limit < 1:
        raise LmlabError(f"--limit must be at least 1 (documents per task), got {limit}")
    if bootstrap_iters < 0:
        raise LmlabError(f"--bootstrap-iters must be 0 or more, got {bootstrap_iters}")
    if not Path(ckpt).exists():
        raise LmlabError(f"{ckpt} does not exist; give a run folder (a decoder with its tokenizer.json)")
    out.mkdir(parents=True, exist_ok=True)
    folder = write_tasks(tasks, out / "tasks")
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):  # the tasks are local files: never ask a hub
        os.environ.setdefault(var, "1")
    # lm-eval takes seconds to import: do it while the server starts
    threading.Thread(target=_import_lm_eval, daemon=True).start()
    with serve_process(ckpt, out / "server.log", device) as url:
        _, body = _get(url + "/v1/models")
        max_len = int(json.loads(body)["data"][0]["max_model_len"])
        model_args = {"model": SERVED_NAME, "base_url": url + "/v1/completions",
                      "tokenizer_backend": "remote", "tokenized_requests": True, "max_length": max_len,
                      "batch_size": batch_size, "num_concurrent": num_concurrent, "max_retries": 1}
        raw = _evaluate(model_args, [t.name for t in tasks], folder, limit, bootstrap_iters)
    samples = raw.get("samples", {})
    documents = {t: int(n.get("effective", 0)) for t, n in raw.get("n-samples", {}).items()}
    return HarnessResult(results_rows(raw["results"]), documents, samples, raw, model_args)


def _import_lm_eval() -> None:
    import importlib

    for name in ("lm_eval.evaluator", "lm_eval.tasks", "lm_eval.models.openai_completions"):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the import in _evaluate raises it where it is reported
            return


def _evaluate(model_args: dict[str, Any], names: list[str], folder: Path, limit: int | None,
              bootstrap_iters: int) -> dict[str, Any]:
    import logging

    import lm_eval
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its INFO lines drown the table
    raw = lm_eval.simple_evaluate(model="local-completions", model_args=model_args, tasks=names,
                                  task_manager=TaskManager(include_path=str(folder), include_defaults=False),
                                  limit=limit, log_samples=True, bootstrap_iters=bootstrap_iters)
    if raw is None:
        raise LmlabError("lm-eval returned no results")
    return raw
