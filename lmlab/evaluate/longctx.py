"""Long-context evaluation: passkey retrieval and MQAR accuracy by context length and depth, with
the peak memory of reading each length (the tasks themselves: :mod:`lmlab.evaluate.longctx_tasks`).

Scoring is teacher-forced greedy exact match, as Zoology scores MQAR: the model reads the
example through its cache (the context before the first answer in one prefill that keeps only
the last position's logits, then the answer region), and an answer counts as right when the
argmax at each of its positions is its token. For a passkey that equals greedy decoding of the
key (every digit right given the right digits before it); it needs no generation loop and holds
no logits for the context, so the memory a length takes is the model's own: a plain decoder's
KV cache and attention grow with the length, an Infini-attention model's memory does not.

A length beyond the model's ``block_size`` is read by an Infini-attention model as any other;
a RoPE (or sinusoidal) model gets its position tables extended to the length and the row says
``extrapolated``; a model with learned positions cannot, and its row says ``exceeds block_size``.

``evaluate_length`` runs one length in this process; :func:`evaluate_length_isolated` runs it
in a fresh Python process (``python -m lmlab.evaluate.longctx``), so each length's peak memory
is measured without what earlier lengths left in the allocator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmlab.device import PeakMemory, autocast
from lmlab.errors import LmlabError
from lmlab.evaluate.longctx_tasks import Example, TaskGenerator, TaskSpec

OK, EXTRAPOLATED, EXCEEDS = "ok", "extrapolated", "exceeds block_size"


@dataclass
class LengthResult:
    """One model at one context length: accuracy overall and per depth (None when it could not be
    read), how it was read (``status``), answers scored, peak memory (MiB) and seconds."""

    length: int
    status: str
    accuracy: float | None = None
    by_depth: dict[str, float] = field(default_factory=dict)
    answers: int = 0
    peak_mib: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return asdict(self)


def check_model(model: Any) -> None:
    """Raise LmlabError unless ``model`` is a decoder-only Transformer (what the tasks read)."""
    from lmlab.models.decoder import Decoder

    if not isinstance(model, Decoder):
        raise LmlabError(f"long-context evaluation reads decoder-only Transformers (GPT-2, LLaMA, "
                         f"Infini-attention presets), not a {type(model).__name__}")


def reach(model: Any, length: int) -> tuple[Any | None, str]:
    """Return ``(model that reads length tokens, status)``: the model itself when it holds the
    length (an Infini-attention model always), a copy with its position tables extended to
    ``length`` (status ``extrapolated``), or ``(None, "exceeds block_size")`` for learned positions."""
    cfg = model.config
    if cfg.attn == "infini" or length <= cfg.block_size:
        return model, OK
    if cfg.pos == "learned" or cfg.block_positions:
        return None, EXCEEDS
    w = model.tok_emb.weight
    longer = type(model)(type(cfg).from_dict({**cfg.to_dict(), "block_size": length})).to(w.device, w.dtype)
    longer.load_state_dict(model.state_dict())
    return longer.eval(), EXTRAPOLATED


@torch.no_grad()
def score_batch(model: Any, examples: list[Example], device: torch.device | str = "cpu",
                precision: str = "fp32") -> list[list[bool]]:
    """Return, per example, whether each of its answers is predicted exactly (teacher-forced argmax
    at every answer token). The examples must have one length; see the module docstring."""
    lengths = {len(e.ids) for e in examples}
    if len(lengths) != 1:
        raise LmlabError("score_batch takes examples of one length")
    device = torch.device(device)
    ids = torch.tensor([e.ids for e in examples], dtype=torch.long, device=device)
    x = ids[:, :-1]
    first = min(a for e in examples for a, _ in e.answers)  # first answer token; predicted at first - 1
    cache = model.new_kv_cache(len(examples), max_len=x.shape[1])
    with autocast(device, precision):
        if first > 1:
            model(x[:, : first - 1], kv_cache=cache, last_only=True)
        logits = model(x[:, first - 1 :], kv_cache=cache)
    pred = logits.argmax(-1).cpu()  # pred[:, j] predicts ids[:, first + j]
    truth = ids.cpu()
    return [[bool((pred[i, a - first : b - first] == truth[i, a:b]).all()) for a, b in e.answers]
            for i, e in enumerate(examples)]


def evaluate_length(model: Any, gen: TaskGenerator, length: int, depths: list[float], samples: int, *,
                    batch_size: int = 1, device: torch.device | str = "cpu", precision: str = "fp32",
                    on_batch: Any = None) -> LengthResult:
    """Score ``samples`` examples per depth at ``length``; return the :class:`LengthResult`.

    Accuracy is the share of answers right (a passkey example has one answer, an MQAR example one
    per query). ``peak_mib`` is the peak memory the reading took (see :class:`lmlab.device.PeakMemory`).
    ``on_batch(n)`` is called after each batch of ``n`` examples (a progress bar).
    """
    check_model(model)
    reader, status = reach(model, length)
    if reader is None:
        return LengthResult(length, status)
    reader.eval()
    t0 = time.perf_counter()
    by_depth: dict[str, float] = {}
    right = total = 0
    with PeakMemory(device) as mem:
        for depth in depths:
            examples = gen.examples(length, depth, samples)
            marks: list[bool] = []
            for i in range(0, len(examples), batch_size):
                batch = examples[i : i + batch_size]
                marks += [m for row in score_batch(reader, batch, device, precision) for m in row]
                if on_batch is not None:
                    on_batch(len(batch))
            by_depth[f"{depth:g}"] = sum(marks) / len(marks)
            right, total = right + sum(marks), total + len(marks)
    return LengthResult(length, status, right / total, by_depth, total,
                        None if mem.peak_mib is None else round(mem.peak_mib, 1),
                        round(time.perf_counter() - t0, 2))


@dataclass
class LengthJob:
    """What a child process evaluates: one checkpoint at one length (JSON on its command line)."""

    ckpt: str
    spec: dict[str, Any]
    seed: int
    length: int
    depths: list[float]
    samples: int
    batch_size: int = 1
    device: str = "cpu"
    precision: str = "fp32"


def run_job(job: LengthJob) -> LengthResult:
    """Load ``job.ckpt`` and evaluate it at ``job.length`` in this process; return the result."""
    from lmlab.loader import load

    model, tokenizer = load(job.ckpt, job.device)
    gen = TaskGenerator(tokenizer, TaskSpec(**job.spec), job.seed)
    return evaluate_length(model, gen, job.length, job.depths, job.samples, batch_size=job.batch_size,
                           device=job.device, precision=job.precision)


def evaluate_length_isolated(job: LengthJob) -> LengthResult:
    """Run :func:`run_job` in a fresh Python process (glibc's mmap threshold pinned from the start)
    and return its result; raise LmlabError with the child's message when it fails."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    child = subprocess.run([sys.executable, "-m", "lmlab.evaluate.longctx", json.dumps(asdict(job))],
                           capture_output=True, text=True, env=env)
    lines = child.stdout.strip().splitlines()
    try:
        record = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = child.stderr.strip().splitlines()[-1:] or ["no output"]
        raise LmlabError(f"the evaluation of length {job.length} failed in its process: {tail[0]}") from None
    if "error" in record:
        raise LmlabError(record["error"])
    return LengthResult(**record)


def results_table(rows: list[dict[str, Any]], depths: list[float]) -> str:
    """Format result rows (``model`` plus a :class:`LengthResult` dict each) as a text table."""
    heads = [f"d={d:g}" for d in depths]
    width = max([5] + [len(r["model"]) for r in rows])
    lines = [f"{'model':<{width}}  {'length':>7}  {'status':<18}  {'acc':>5}  "
             + "  ".join(f"{h:>6}" for h in heads) + f"  {'peak MiB':>9}  {'s':>6}"]
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.2f}"
        cells = [f"{r['by_depth'][f'{d:g}']:.2f}" if f"{d:g}" in r["by_depth"] else "-" for d in depths]
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        lines.append(f"{r['model']:<{width}}  {r['length']:>7}  {r['status']:<18}  {acc:>5}  "
                     + "  ".join(f"{c:>6}" for c in cells) + f"  {peak:>9}  {r['seconds']:>6.1f}")
    return "\n".join(lines)


def plot_results(rows: list[dict[str, Any]], depths: list[float], task: str, path: Path) -> Path:
    """Draw accuracy and peak memory against context length (one line per model) and, per model,
    accuracy by depth and length as a heat map; save the PNG at ``path`` and return it."""
    import numpy as np

    from lmlab.plotting import figure, save_png

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = figure(2 + len(models), width=4.2, height=3.6)
    for name in models:
        mine = [r for r in rows if r["model"] == name]
        ok = [r for r in mine if r["accuracy"] is not None]
        axes[0].plot([r["length"] for r in ok], [r["accuracy"] for r in ok], "o-", label=name)
        extra = [r for r in ok if r["status"] == EXTRAPOLATED]
        if extra:
            axes[0].plot([r["length"] for r in extra], [r["accuracy"] for r in extra], "x", color="k", ms=8)
        mem = [r for r in mine if r["peak_mib"] is not None]
        axes[1].plot([r["length"] for r in mem], [r["peak_mib"] for r in mem], "o-", label=name)
    axes[0].set_title(f"{task}: accuracy (x: extrapolated positions)", fontsize=9)
    axes[0].set_ylim(-0.03, 1.03)
    axes[0].set_ylabel("accuracy")
    axes[1].set_title("peak memory of reading one length", fontsize=9)
    axes[1].set_ylabel("MiB")
    for ax in axes[:2]:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.legend(fontsize=7)
    for ax, name in zip(axes[2:], models):
        mine = sorted((r for r in rows if r["model"] == name), key=lambda r: r["length"])
        grid = np.full((len(depths), len(mine)), np.nan)
        for j, r in enumerate(mine):
            for i, d in enumerate(depths):
                grid[i, j] = r["by_depth"].get(f"{d:g}", np.nan)
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
        ax.set_xticks(range(len(mine)), [str(r["length"]) for r in mine], rotation=45, fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
        ax.set_xlabel("context length")
        ax.set_ylabel("depth of the needle")
        ax.set_title(f"{name}: accuracy by depth", fontsize=9)
    if models:
        fig.colorbar(im, ax=axes[-1], fraction=0.05)
    return save_png(fig, path)


def _child_main(argv: list[str]) -> int:
    """Entry of the child process: evaluate the LengthJob JSON in argv[0]; print the result as JSON."""
    try:
        result = run_job(LengthJob(**json.loads(argv[0])))
    except LmlabError as e:
        print(json.dumps({"error": str(e)}))
        return 2
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
