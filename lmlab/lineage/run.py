"""The lineage as a function: ``run_lineage(LineageConfig) -> LineageResult``.

One BPE tokenizer and one train/validation split serve every model: an n-gram (best
order and smoothing), Bengio's NPLM, an LSTM, a GPT-2 style and a LLaMA style
Transformer. Each neural model trains under the same budget (tokens, FLOPs or seconds:
:mod:`lmlab.lineage.budget`) by calling :func:`lmlab.train.pretrain.pretrain`; all are
scored on the whole validation split. The run folder gets results.json, lineage.png,
report.md, config.yaml, the prepared data and each model's run (the n-gram's in ``ngram/``:
model.arpa, tokenizer.json and ngram.json, which ``lmlab serve`` reads).

The run is built in a temporary folder beside OUT and renamed into place only when it is
whole, so a failure, Ctrl-C or kill never leaves a half-written run, nor destroys the
run that ``--overwrite`` was about to replace.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmlab.config import Precision, arg, save_config
from lmlab.errors import LmlabError, Terminated
from lmlab.fileio import replace_folder, write_json
from lmlab.lineage.budget import Budget, apply_preset, budget_of, describe_presets
from lmlab.lineage.entries import DEFAULT_MODELS, ENTRIES, Entry

PLOT = "lineage.png"


@dataclass
class LineageConfig:
    corpus: str = arg("shakespeare", "corpus to prepare (see 'lmlab corpora'), e.g. shakespeare or a .txt")
    data: Path | None = arg(None, "use this prepared-data folder instead of preparing --corpus")
    vocab_size: int = arg(4096, "BPE vocabulary size of the shared tokenizer")
    preset: str | None = arg(None, "named settings for options left at their defaults: " + describe_presets())
    budget_tokens: int | None = arg(None, "training tokens per neural model (the same on every machine)")
    budget_flops: float | None = arg(
        None, "training FLOPs (forward + backward) per neural model, by each model's own count, e.g. 1.5e13"
    )
    budget: float | None = arg(
        None,
        "seconds of training per model instead (depends on the machine; the n-gram search stops after it too)"
    )
    out: Path | None = arg(None, "run folder for results.json, lineage.png, report.md and the model runs")
    models: list[str] = arg(list(DEFAULT_MODELS), f"models, oldest first, from: {', '.join(ENTRIES)}")
    size: Literal["tiny", "mini", "small"] = arg(
        "small", "size of the neural models: small presets, mini (them at half width: the demo), tiny (tests)"
    )
    block_size: int = arg(128, "tokens per training and validation window of the neural models")
    eval_stride: int | None = arg(
        None, "final scores slide the windows by this many tokens, scoring each one's last STRIDE "
        "(default: half the block, so every token has at least that much context; the block: no overlap)"
    )
    batch_size: int = arg(16, "windows per optimizer step")
    warmup_steps: int = arg(20, "linear warmup steps of the neural models")
    evals: int = arg(8, "validations during each neural model's budget, at equal fractions of it (its curve)")
    eval_iters: int = arg(8, "batches per validation during training (the final score uses the whole split)")
    ngram_orders: list[int] = arg([1, 2, 3, 4, 5], "n-gram orders to try")
    ngram_smoothings: list[str] = arg(["mkn", "kn", "katz", "witten-bell"], "n-gram smoothings to try")
    prompt: str = arg("", "sample prompt ('' starts a new document)")
    sample_tokens: int = arg(60, "tokens per sample")
    temperature: float = arg(0.8, "sampling temperature")
    top_k: int = arg(50, "sample among the k most likely tokens")
    seed: int = arg(1337, "seed of inits, data order and samples")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    precision: Precision = arg("auto", "precision of the neural models (fp32: the same bpb on any CPU)")
    overwrite: bool = arg(False, "replace an existing lineage run in --out (only once the new one is whole)")
    progress: bool = arg(True, "show progress bars (--no-progress hides them)")
    json: bool = arg(False, "print the results as one JSON object")


@dataclass
class LineageResult:
    """A finished lineage run: its folder, settings and one result dict per model (results.json)."""

    out: Path
    settings: dict[str, Any]
    models: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        """Wall-clock seconds of the whole run."""
        return float(self.settings["total_seconds"])


def _eval_stride(cfg: LineageConfig) -> int:
    return cfg.eval_stride if cfg.eval_stride is not None else max(1, cfg.block_size // 2)


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or path.is_relative_to(folder)


def _check(cfg: LineageConfig) -> tuple[list[Entry], Budget]:
    if cfg.out is None:
        raise LmlabError("lineage needs --out RUN, the folder for its results")
    budget = budget_of(cfg)
    unknown = [m for m in cfg.models if m not in ENTRIES]
    if unknown or not cfg.models:
        raise LmlabError(f"unknown lineage model(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(ENTRIES)}")
    if cfg.block_size < 2 or cfg.batch_size < 1 or cfg.evals < 1 or cfg.sample_tokens < 0:
        raise LmlabError("--block-size must be >= 2, --batch-size and --evals >= 1, --sample-tokens >= 0")
    if not 0 < _eval_stride(cfg) <= cfg.block_size:
        raise LmlabError(f"--eval-stride must be between 1 and --block-size {cfg.block_size} "
                         f"(got {cfg.eval_stride})")
    if "ngram" in cfg.models and (not cfg.ngram_orders or min(cfg.ngram_orders) < 1):
        raise LmlabError(f"--ngram-orders must be orders >= 1 (got {cfg.ngram_orders}); e.g. 2,3,4,5")
    from lmlab.ngram.model import SMOOTHINGS

    bad = [s for s in cfg.ngram_smoothings if s not in SMOOTHINGS]
    if bad or not cfg.ngram_smoothings:
        raise LmlabError(f"unknown n-gram smoothing(s) {', '.join(bad) or '(none)'}; "
                         f"choose from {', '.join(SMOOTHINGS)}")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise LmlabError(f"--out {out} is a file; give a folder (new or an old lineage run) for the run")
    inputs = [("--data", Path(cfg.data))] if cfg.data is not None else []
    if cfg.data is None and Path(cfg.corpus).exists():
        inputs.append(("--corpus", Path(cfg.corpus)))
    for flag, path in inputs:
        if _inside(path, out):
            raise LmlabError(f"{flag} {path} lies inside --out {out}, which the run replaces; "
                             "move it elsewhere or choose another --out")
    if (out / "results.json").exists() and not cfg.overwrite:
        raise LmlabError(f"{out} already holds a lineage run; pass --overwrite or choose another --out")
    if out.exists() and not (out / "results.json").exists() and any(out.iterdir()):
        raise LmlabError(f"{out} exists and is not a lineage run; choose another --out")
    return [ENTRIES[m] for m in cfg.models], budget


def _prepare(cfg: LineageConfig, work: Path):
    from lmlab.data.prepare import load_prepared, prepare

    if cfg.data is not None:
        data = load_prepared(cfg.data)
    else:
        prepare(cfg.corpus, work / "data", kind="bpe", vocab_size=cfg.vocab_size)
        data = load_prepared(work / "data")
    if len(data.val) < cfg.block_size + 1:
        raise LmlabError(f"the validation split has {len(data.val)} tokens, fewer than one window of "
                         f"{cfg.block_size}; use a larger corpus or a smaller --block-size")
    return data


@dataclass(frozen=True)
class _Plan:
    """How one neural model spends the budget: its FLOPs per token and, for a work budget, its steps."""

    flops_per_token: float
    tokens_per_step: int
    max_steps: int | None


def _plan(cfg: LineageConfig, entry: Entry, vocab_size: int, budget: Budget) -> _Plan:
    from lmlab.models.registry import build_model, get_preset
    from lmlab.train.pretrain import parse_model_args

    model = build_model(get_preset(entry.preset(cfg.size), vocab_size=vocab_size, block_size=cfg.block_size,
                                   **parse_model_args(entry.args(cfg.size))))
    fpt = float(model.flops_per_token(cfg.block_size))
    per_step = cfg.batch_size * cfg.block_size
    return _Plan(fpt, per_step, budget.steps(entry.name, fpt, per_step) if budget.work else None)


def _ngram(cfg: LineageConfig, data, tokenizer, entry: Entry, budget: Budget,
           run_dir: Path) -> dict[str, Any]:
    from lmlab.lineage.ngram_entry import sample_ngram, search_ngram
    from lmlab.ngram.model import score_token_ids
    from lmlab.ngram.token_lm import TokenNgramLM, save_token_ngram

    # Counting has no gradient budget: under a work budget the search tries every candidate.
    limit = budget.value if budget.kind == "seconds" else math.inf
    found = search_ngram(data.train, data.eot_id, data.bytes_per_token("train"), cfg.ngram_orders,
                         cfg.ngram_smoothings, limit)
    summary = score_token_ids(found.model, data.val, data.eot_id).summary(data.meta["splits"]["val"]["bytes"])
    lm = TokenNgramLM(found.model, data.eot_id, data.vocab_size)
    t0 = time.perf_counter()
    save_token_ngram(run_dir, lm, data.dir / "tokenizer.json", val_bpb=summary["bits_per_byte"],
                     training_tokens=int(len(data.train)))
    save_seconds = time.perf_counter() - t0
    prompt_ids = tokenizer.encode(cfg.prompt) if cfg.prompt else []
    sample = tokenizer.decode(sample_ngram(lm, prompt_ids, cfg.sample_tokens, seed=cfg.seed,
                                           temperature=cfg.temperature, top_k=cfg.top_k))
    return {
        "name": entry.name, "label": entry.label, "params": sum(found.model.ngram_counts()),
        "train_seconds": round(found.seconds, 2), "tokens_seen": int(len(data.train)), "train_flops": None,
        "val_bpb": summary["bits_per_byte"], "val_ppl": summary["perplexity"],
        "val_loss": summary["nats_per_token"], "curve": [],
        "order": found.order, "smoothing": found.smoothing, "fit_seconds": round(found.fit_seconds, 2),
        "save_seconds": round(save_seconds, 2), "search": found.candidates, "sample": sample,
    }


def _neural(cfg: LineageConfig, data, data_dir: Path, entry: Entry, run_dir: Path, device, budget: Budget,
            plan: _Plan) -> dict[str, Any]:
    from lmlab.evaluate.perplexity import evaluate_perplexity
    from lmlab.generate import generate_text
    from lmlab.loader import load_model_any
    from lmlab.train.log import read_metrics
    from lmlab.train.options import OptimOptions
    from lmlab.train.pretrain import PretrainConfig, pretrain

    if plan.max_steps is not None:  # validate at equal fractions of the steps, the same on every machine
        length = dict(max_steps=plan.max_steps, eval_interval=math.ceil(plan.max_steps / cfg.evals))
    else:
        length = dict(time_budget=budget.value, eval_interval_s=budget.value / cfg.evals)
    pc = PretrainConfig(
        model=entry.preset(cfg.size), data=data_dir, out=run_dir, model_args=entry.args(cfg.size),
        block_size=cfg.block_size, batch_size=cfg.batch_size,
        optim=OptimOptions(lr=entry.lr, min_lr=entry.lr / 10, warmup_steps=cfg.warmup_steps),
        precision=cfg.precision, seed=cfg.seed, device=cfg.device, eval_iters=cfg.eval_iters,
        log_interval=10, progress=cfg.progress, **length,
    )
    try:
        result = pretrain(pc)
    except LmlabError as e:
        raise LmlabError(f"{entry.name}: {e}") from None
    if result.interrupted:
        raise KeyboardInterrupt
    curve = []
    for r in read_metrics(run_dir):
        if "val_bpb" in r:
            tokens = r["step"] * plan.tokens_per_step
            curve.append({"step": r["step"], "tokens": tokens, "flops": tokens * plan.flops_per_token,
                          "elapsed_s": r.get("elapsed"), "val_bpb": r["val_bpb"]})
    model = load_model_any(run_dir, device)
    full = evaluate_perplexity(model, data.val, block_size=cfg.block_size, batch_size=cfg.batch_size,
                               device=device, split_bytes=data.meta["splits"]["val"]["bytes"],
                               stride=_eval_stride(cfg))
    sample = generate_text(model, data.tokenizer(), cfg.prompt, cfg.sample_tokens,
                           temperature=cfg.temperature, top_k=cfg.top_k, seed=cfg.seed)[0].text
    return {
        "name": entry.name, "label": entry.label, "preset": pc.model, "params": model.num_params(),
        "train_seconds": result.elapsed_s, "tokens_seen": result.tokens, "steps": result.step,
        "flops_per_token": plan.flops_per_token, "train_flops": result.tokens * plan.flops_per_token,
        "val_bpb": full.bits_per_byte, "val_ppl": math.exp(full.loss), "val_loss": full.loss,
        "curve": curve, "sample": sample,
    }


def _repoint(work: Path, out: Path) -> None:
    """Make the model runs' saved configs name the data at its final place, not in the temp folder."""
    for path in work.glob("*/config.yaml"):
        text = path.read_text(encoding="utf-8")
        if str(work) in text:
            path.write_text(text.replace(str(work), str(out)), encoding="utf-8")


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Make SIGTERM raise :class:`~lmlab.errors.Terminated` (handled as Ctrl-C is), so the temporary
    folder is removed on it too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_lineage(cfg: LineageConfig, log: Callable[[str], None] | None = None) -> LineageResult:
    """Train the lineage of language models on one corpus under one budget; return the result.

    ``log`` receives one line per stage (default: stdout). The run is built in a temporary
    folder beside ``cfg.out`` and swapped in only when whole: on any failure or Ctrl-C
    (KeyboardInterrupt) or SIGTERM the temporary folder is removed and an old run at ``cfg.out``
    stays; after a SIGKILL the old run stays and a hidden ``.OUT.new-*`` folder is left beside it.
    """
    say = log or (lambda line: print(line, flush=True))
    cfg = apply_preset(cfg)
    entries, budget = _check(cfg)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    t_start = time.perf_counter()
    try:
        with _sigterm_interrupts():
            result = _build(cfg, entries, budget, work, out, say, t_start)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return result


def _build(cfg: LineageConfig, entries: list[Entry], budget: Budget, work: Path, out: Path,
           say: Callable[[str], None], t_start: float) -> LineageResult:
    """Run every model into ``work``, write the results there and swap ``work`` in at ``out``."""
    from lmlab.device import resolve_device, resolve_precision

    data = _prepare(cfg, work)
    data_dir = Path(cfg.data) if cfg.data is not None else work / "data"
    tokenizer = data.tokenizer()
    device = resolve_device(cfg.device)
    precision = resolve_precision(device, cfg.precision)
    plans = {e.name: _plan(cfg, e, data.vocab_size, budget) for e in entries if e.neural}
    results: list[dict[str, Any]] = []
    for entry in entries:
        if entry.neural:
            plan = plans[entry.name]
            steps = f", {plan.max_steps} steps" if plan.max_steps is not None else ""
            say(f"[lineage] {entry.label}: {budget.describe()}{steps}")
            r = _neural(cfg, data, data_dir, entry, work / entry.name, device, budget, plan)
        else:
            say(f"[lineage] {entry.label}")
            r = _ngram(cfg, data, tokenizer, entry, budget, work / entry.name)
        results.append(r)
        say(f"[lineage] {entry.name}: val bpb {r['val_bpb']:.4f}, ppl {r['val_ppl']:.2f}")
    settings = {
        "corpus": cfg.corpus if cfg.data is None else str(cfg.data), "tokenizer": data.meta["tokenizer"],
        "vocab_size": data.vocab_size, "train_tokens": int(len(data.train)),
        "val_tokens": int(len(data.val)), "val_bytes": int(data.meta["splits"]["val"]["bytes"]),
        "budget_kind": budget.kind, "budget": budget.value, "budget_text": budget.describe(),
        "preset": cfg.preset, "device": str(device), "precision": precision, "seed": cfg.seed,
        "block_size": cfg.block_size, "eval_stride": _eval_stride(cfg), "batch_size": cfg.batch_size,
        "evals": cfg.evals, "eval_iters": cfg.eval_iters,
        "prompt": cfg.prompt, "temperature": cfg.temperature, "top_k": cfg.top_k,
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    from lmlab.lineage.report import plot_curves, write_report

    plot_curves(results, work / PLOT, f"{settings['corpus']}: {budget.describe()} per model")
    write_report(work / "report.md", results, settings, PLOT)
    save_config(cfg, work / "config.yaml")
    write_json(work / "results.json", {"settings": settings, "models": results})
    _repoint(work, out)
    replace_folder(work, out)
    return LineageResult(out, settings, results)
