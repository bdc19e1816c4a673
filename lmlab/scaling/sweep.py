"""IsoFLOP sweeps: train a grid of model sizes x compute budgets and tabulate N, D, C and loss.

The family: decoders generated from their width. ``d_model`` fixes everything else:
``n_head = d_model / head_dim`` (head_dim fixed, 16 by default), ``n_layer =
max(1, round(d_model / aspect))`` (32 by default, so depth grows with width), MHA, a
tied head; ``llama`` is RMSNorm + SwiGLU (``d_ff`` = 8/3 d_model rounded up to 16) + RoPE
without biases, ``gpt2`` is LayerNorm + GELU (``d_ff = 4 d_model``) + learned positions
with biases. Sizes are named (:data:`SIZES`) or given as d_model values.

How compute is counted: a run's training FLOPs per token ``f`` come from
:mod:`lmlab.scaling.flops` at the training context (``block_size``) by the chosen count,
Chinchilla's Appendix F by default (embeddings, attention with its seq^2 terms, dense
block, output logits; backward = 2 x forward). A budget C gives ``D = C / f`` tokens,
rounded up to whole steps of ``batch_size x block_size`` tokens; the table records the
trained tokens D, the compute actually spent ``C = f D`` (at least the budget, by less than
one step), the nominal ``budget``, and ``C_6ND = 6 N D`` for comparison.

runs.csv columns: ``name, N, D, C, loss`` (what ``lmlab scaling fit`` reads) and
``budget, params_total, N_nonembedding, flops_per_token, C_6ND, d_model, n_layer, n_head,
d_ff, steps, seconds, val_bpb, eval_tokens``. N is the total parameter count (Hoffmann et
al.'s convention, embeddings included, consistent with a C that counts the embedding and
logit matmuls); ``N_nonembedding`` is Kaplan's N (``lmlab scaling fit SWEEP --n-column
N_nonembedding``). ``loss`` is the validation loss in nats/token on the same
``eval_tokens`` windows of the validation split for every run.

Resuming: a run with a row in runs.csv is done and skipped; a run folder with a checkpoint
but no row is resumed (``lmlab pretrain --resume``), or only evaluated when its training
had finished. Each run's cosine schedule is fitted to its own number of steps.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lmlab.config import Precision, arg
from lmlab.errors import LmlabError
from lmlab.train.options import OptimOptions

if TYPE_CHECKING:
    from lmlab.models.decoder import DecoderConfig
    from lmlab.train.pretrain import PretrainConfig

# Named widths (d_model) of the family.
SIZES: dict[str, int] = {"2xs": 16, "xs": 32, "s": 48, "m": 64, "l": 96, "xl": 128, "2xl": 192, "3xl": 256}
FAMILIES = {"llama": "llama-tiny", "gpt2": "gpt2-tiny"}  # family -> the preset its runs are built from
COLUMNS = ["name", "N", "D", "C", "loss", "budget", "params_total", "N_nonembedding", "flops_per_token",
           "C_6ND", "d_model", "n_layer", "n_head", "d_ff", "steps", "seconds", "val_bpb", "eval_tokens"]
# Options that change what a run trains or how it is scored: a sweep folder keeps them fixed.
FIXED_OPTIONS = ("family", "head_dim", "aspect", "flops", "block_size", "batch_size", "lr", "min_lr",
                 "warmup_steps", "warmup_fraction", "weight_decay", "beta1", "beta2", "grad_clip",
                 "eval_tokens", "vocab_size", "seed", "precision", "data")

FlopsMethod = Literal["chinchilla", "kaplan", "palm", "6N"]


@dataclass
class SweepConfig:
    data: Path | None = arg(None, "prepared data folder (from 'lmlab data prepare')")
    out: Path | None = arg(None, "sweep folder: config.yaml, runs.csv and runs/NAME/ (one pretrain run each)")
    budgets: list[float] = arg([], "training compute budgets C in FLOPs, comma-separated, e.g. 1e12,3e12")
    sizes: list[str] = arg(["xs", "s", "m", "l"], "model widths: d_model values or names (2xs=16, xs=32, "
                                                   "s=48, m=64, l=96, xl=128, 2xl=192, 3xl=256), "
                                                   "comma-separated")
    family: Literal["llama", "gpt2"] = arg("llama", "llama: RMSNorm, SwiGLU (d_ff 8/3 d_model rounded "
                                                    "up to 16), RoPE, no biases; gpt2: LayerNorm, GELU "
                                                    "(d_ff 4 d_model), learned positions, biases; both "
                                                    "MHA with a tied head")
    head_dim: int = arg(16, "width of each attention head: n_head = d_model / head_dim")
    aspect: int = arg(32, "d_model per layer: n_layer = max(1, round(d_model / aspect))")
    flops: FlopsMethod = arg("chinchilla", "FLOP count that turns a budget into tokens, D = C / (training "
                                           "FLOPs per token at --block-size); see 'lmlab scaling flops'")
    block_size: int = arg(64, "tokens per training window (the models' context)")
    batch_size: int = arg(8, "windows per optimizer step")
    optim: OptimOptions = arg(OptimOptions(lr=3e-3, min_lr=3e-4, warmup_steps=0, warmup_fraction=0.05),
                              "every run's AdamW and schedule (warmup: a fraction of each run's steps)")
    eval_tokens: int = arg(16384, "validation tokens each run is scored on: the same windows for every run "
                                  "(the whole split when it is smaller)")
    vocab_size: int | None = arg(None, "model vocabulary (default: the data's); lets --dry-run work "
                                       "without --data")
    seed: int = arg(1337, "seed of every run's init and data order")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    precision: Precision = arg("auto", "training precision; auto = bf16 where the hardware has it, "
                                           "else fp32 (scoring is always fp32)")
    log_interval: int = arg(10, "log each run's metrics every N steps")
    save_interval: int = arg(0, "checkpoint every N steps within a run, so a killed run resumes from there "
                                "(0: only at its end and on Ctrl-C)")
    dry_run: bool = arg(False, "print the grid (name, N, D, steps, C) and exit without training")
    progress: bool = arg(True, "show each run's progress bar")
    json: bool = arg(False, "print the grid or the results as one JSON object")


def parse_size(size: str | int) -> int:
    """Return the d_model of a size: a name from :data:`SIZES` or a positive integer."""
    text = str(size).strip().lower()
    if text in SIZES:
        return SIZES[text]
    try:
        d = int(text)
    except ValueError:
        raise LmlabError(f"size {size!r} is neither a d_model value (e.g. 64) nor a size name: "
                         + ", ".join(f"{k}={v}" for k, v in SIZES.items())) from None
    if d < 1:
        raise LmlabError(f"size {size!r} must be a positive d_model")
    return d


def family_config(family: str, d_model: int, *, head_dim: int, aspect: int, vocab_size: int,
                  block_size: int) -> DecoderConfig:
    """Return the :class:`DecoderConfig` of the family member of width ``d_model`` (see the module doc)."""
    from lmlab.models.registry import get_preset
    from lmlab.nn.mlp import swiglu_hidden

    if family not in FAMILIES:
        raise LmlabError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")
    if head_dim < 1 or aspect < 1:
        raise LmlabError(f"--head-dim ({head_dim}) and --aspect ({aspect}) must be positive integers")
    if d_model % head_dim:
        raise LmlabError(f"d_model {d_model} is not a multiple of --head-dim {head_dim}; pick sizes that "
                         f"are multiples of {head_dim} or change --head-dim")
    n_head = d_model // head_dim
    n_layer = max(1, int(d_model / aspect + 0.5))
    d_ff = swiglu_hidden(d_model, 16) if family == "llama" else 4 * d_model
    return get_preset(FAMILIES[family], vocab_size=vocab_size, block_size=block_size, d_model=d_model,
                      n_layer=n_layer, n_head=n_head, n_kv_heads=n_head, d_ff=d_ff)


def budget_tag(budget: float) -> str:
    """Return a short, file-name-safe label of a budget: 1e12 -> ``1e12``, 3.16e12 -> ``3.16e12``."""
    return f"{budget:.3g}".replace("e+", "e").replace("e0", "e")


@dataclass(frozen=True)
class SweepRun:
    """One planned run of the grid: a model of the family trained on a budget's worth of tokens."""

    name: str
    budget: float  # the nominal compute budget C, FLOPs
    d_model: int
    n_layer: int
    n_head: int
    d_ff: int
    params: int  # total parameters (N in runs.csv)
    params_non_embedding: int  # Kaplan's N
    flops_per_token: float  # training FLOPs per token by the sweep's count, at block_size
    steps: int
    tokens: int  # D: steps x batch_size x block_size
    compute: float  # C actually spent: flops_per_token x tokens

    @property
    def compute_6nd(self) -> float:
        """6 N D with N the total parameters, for comparison with ``compute``."""
        return 6.0 * self.params * self.tokens

    def as_dict(self) -> dict[str, Any]:
        """Return the run's plan as a JSON-friendly dict."""
        return dataclasses.asdict(self) | {"compute_6nd": self.compute_6nd}


@dataclass(frozen=True)
class Grid:
    """The planned runs and the (budget, size) pairs left out because the budget buys less than one step."""

    runs: list[SweepRun]
    skipped: list[dict[str, Any]]
    tokens_per_step: int


def plan_grid(budgets: list[float], sizes: list[str], *, family: str = "llama", head_dim: int = 16,
              aspect: int = 32, vocab_size: int, block_size: int, batch_size: int,
              flops: str = "chinchilla") -> Grid:
    """Plan an IsoFLOP grid; return a :class:`Grid` of runs in budget-then-size order.

    Each budget C gives each size ``D = C / f`` tokens (``f`` its training FLOPs per token by
    the ``flops`` count at ``block_size``), trained in ``ceil(D / (batch_size x block_size))``
    steps. Raises LmlabError for non-positive budgets, no sizes, or a budget too small for
    the smallest model to take one step (naming the smallest budget that works); pairs where
    a larger model cannot take one step are skipped and listed.
    """
    from lmlab.scaling.flops import METHODS, count_params, train_flops_per_token

    if not budgets:
        raise LmlabError("give --budgets: training compute budgets in FLOPs, e.g. --budgets 1e12,3e12")
    bad = [b for b in budgets if not (math.isfinite(b) and b > 0)]
    if bad:
        raise LmlabError(f"budgets must be positive numbers of FLOPs, got {bad[0]!r}; "
                         "e.g. --budgets 1e12,3e12")
    if not sizes:
        raise LmlabError("give --sizes: d_model values or names, e.g. --sizes 32,64,96 or xs,m,l")
    if flops not in METHODS:
        raise LmlabError(f"--flops {flops!r} is not one of {', '.join(METHODS)}")
    for name, value in (("--block-size", block_size), ("--batch-size", batch_size),
                        ("--vocab-size", vocab_size)):
        if value < 1:
            raise LmlabError(f"{name} must be a positive integer, got {value}")
    widths = sorted(set(parse_size(s) for s in sizes))
    tags = [budget_tag(b) for b in sorted(set(budgets))]
    if len(set(tags)) != len(tags):
        raise LmlabError("two budgets round to the same 3 significant digits; give budgets that differ more")
    per_step = batch_size * block_size
    models = []
    for d in widths:
        mc = family_config(family, d, head_dim=head_dim, aspect=aspect, vocab_size=vocab_size,
                           block_size=block_size)
        models.append((mc, count_params(mc), train_flops_per_token(mc, block_size, flops)))
    smallest = min(models, key=lambda m: m[2])
    min_budget = smallest[2] * per_step
    too_small = [b for b in budgets if b < min_budget]
    if too_small:
        raise LmlabError(
            f"budget {min(too_small):.3g} FLOPs is too small for the smallest model (d_model "
            f"{smallest[0].d_model}, {smallest[2]:.4g} FLOPs/token) to take one step of {batch_size} x "
            f"{block_size} tokens; the smallest budget that works is {min_budget:.4g} FLOPs "
            "(or lower --batch-size / --block-size)")
    runs, skipped = [], []
    for budget in sorted(set(budgets)):
        for mc, p, f in models:
            name = f"C{budget_tag(budget)}-d{mc.d_model}"
            if budget < f * per_step:
                skipped.append({"name": name, "budget": budget, "d_model": mc.d_model,
                                "reason": f"{budget:.3g} FLOPs buys {budget / f:,.0f} tokens, less than one "
                                          f"step of {per_step}"})
                continue
            steps = math.ceil(budget / f / per_step)
            tokens = steps * per_step
            runs.append(SweepRun(name=name, budget=budget, d_model=mc.d_model, n_layer=mc.n_layer,
                                 n_head=mc.n_head, d_ff=int(mc.d_ff or 0), params=p.total,
                                 params_non_embedding=p.non_embedding, flops_per_token=f, steps=steps,
                                 tokens=tokens, compute=f * tokens))
    return Grid(runs, skipped, per_step)


# ---------------------------------------------------------------- runs.csv


def read_rows(path: Path) -> list[dict[str, str]]:
    """Return the rows of a sweep's runs.csv as dicts of strings (empty list when it does not exist)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "name" not in reader.fieldnames:
            raise LmlabError(f"{path} is not a sweep table (no 'name' column); move it away "
                             "or use another --out")
        return [row for row in reader if (row.get("name") or "").strip()]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Atomically write ``rows`` to runs.csv: :data:`COLUMNS` first, then any other columns found."""
    from lmlab.fileio import write_text

    extra = sorted({k for r in rows for k in r} - set(COLUMNS))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS + extra, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return "" if v is None else v


# ---------------------------------------------------------------- running


def pretrain_config(cfg: SweepConfig, run: SweepRun, *, vocab_size: int, resume: bool) -> PretrainConfig:
    """Return the ``lmlab pretrain`` config that trains ``run`` of the sweep ``cfg`` into its run folder."""
    from lmlab.train.pretrain import PretrainConfig

    return PretrainConfig(
        model=FAMILIES[cfg.family], data=Path(cfg.data), out=run_dir(cfg, run), resume=resume,
        vocab_size=vocab_size, d_model=run.d_model, n_layer=run.n_layer, n_head=run.n_head,
        n_kv_heads=run.n_head, d_ff=run.d_ff, block_size=cfg.block_size, batch_size=cfg.batch_size,
        optim=cfg.optim,
        precision=cfg.precision, seed=cfg.seed, device=cfg.device, max_steps=run.steps, eval_iters=0,
        log_interval=cfg.log_interval, save_interval=cfg.save_interval, progress=cfg.progress, json=True)


def run_dir(cfg: SweepConfig, run: SweepRun) -> Path:
    """Return the run folder of ``run``: SWEEP/runs/<name>."""
    return Path(cfg.out) / "runs" / run.name


def _train(cfg: SweepConfig, run: SweepRun, vocab_size: int) -> tuple[str, float | None]:
    """Train (or resume) one run; return ``(what happened, training seconds or None)``.

    Raises KeyboardInterrupt when the run was interrupted (its checkpoint is saved)."""
    from lmlab.train import checkpoint as ckpt
    from lmlab.train.log import read_metrics
    from lmlab.train.pretrain import pretrain

    folder = run_dir(cfg, run)
    latest = ckpt.latest_step(folder)
    if latest is not None and latest >= run.steps:
        elapsed = [r["elapsed"] for r in read_metrics(folder) if "elapsed" in r]
        return "evaluated (training had finished)", (elapsed[-1] if elapsed else None)
    pcfg = pretrain_config(cfg, run, vocab_size=vocab_size, resume=latest is not None)
    result = pretrain(pcfg)
    if result.interrupted:
        raise KeyboardInterrupt
    what = f"resumed from step {latest}" if latest is not None else "trained"
    return what, result.elapsed_s


def _evaluate(cfg: SweepConfig, run: SweepRun, data: Any, device: Any) -> tuple[float, float | None, int]:
    """Score a trained run on the sweep's fixed validation windows; return ``(loss, bpb, tokens)``."""
    from lmlab.evaluate.perplexity import evaluate_perplexity
    from lmlab.models.registry import load_model

    model = load_model(run_dir(cfg, run), map_location=device)
    r = evaluate_perplexity(model, data.val, block_size=cfg.block_size, batch_size=cfg.batch_size,
                            device=device, precision="fp32",
                            max_windows=max(1, math.ceil(cfg.eval_tokens / cfg.block_size)),
                            split_bytes=data.meta["splits"]["val"]["bytes"],
                            bytes_per_token=data.bytes_per_token("val"))
    return r.loss, r.bits_per_byte, r.tokens


def _check_same_sweep(cfg: SweepConfig, out: Path) -> None:
    """Refuse to add runs to a sweep folder whose saved config trains or scores runs differently."""
    from lmlab.config import load_yaml

    path = out / "config.yaml"
    if not path.is_file():
        return
    saved = load_yaml(path)
    saved = {**saved, **(saved.get("optim") or {})}  # the optimizer options are saved as a group
    mine_all = {**vars(cfg), **vars(cfg.optim)}
    diffs = []
    for key in FIXED_OPTIONS:
        mine, theirs = mine_all[key], saved.get(key)
        if key == "data":
            same = theirs is not None and Path(str(theirs)).resolve() == Path(str(mine)).resolve()
        elif isinstance(mine, float) and isinstance(theirs, (int, float)):
            same = math.isclose(mine, float(theirs), rel_tol=1e-12)
        else:
            same = mine == theirs
        if not same:
            diffs.append(f"{key.replace('_', '-')} {theirs!r} there vs {mine!r} now")
    if diffs:
        raise LmlabError(f"{out} holds a sweep with other settings ({'; '.join(diffs[:4])}); rerun with its "
                         "settings to resume or extend it, or give another --out")


def resolve_vocab(cfg: SweepConfig) -> int:
    """Return the sweep's vocabulary: --vocab-size, else the data's; check the data folder exists."""
    from lmlab.data.prepare import read_meta

    data_vocab = None
    if cfg.data is not None:
        if not Path(cfg.data).is_dir():
            raise LmlabError(f"--data {cfg.data} does not exist; prepare it with "
                             "'lmlab data prepare --corpus NAME --out DIR' or give the right folder")
        data_vocab = int(read_meta(Path(cfg.data))["vocab_size"])
    elif not cfg.dry_run:
        raise LmlabError("a sweep needs --data DIR (prepared data) and --out SWEEP")
    if cfg.vocab_size is None:
        if data_vocab is None:
            raise LmlabError("--dry-run without --data needs --vocab-size (the model vocabulary)")
        return data_vocab
    if data_vocab is not None and cfg.vocab_size < data_vocab:
        raise LmlabError(f"--vocab-size {cfg.vocab_size} is smaller than the data's vocabulary "
                         f"({data_vocab}); drop --vocab-size to use the data's")
    return cfg.vocab_size


def plan_from_config(cfg: SweepConfig, vocab_size: int) -> Grid:
    """Plan the grid of a sweep config (see :func:`plan_grid`)."""
    if not 0.0 <= cfg.optim.warmup_fraction < 1.0:
        raise LmlabError(f"--warmup-fraction is a fraction of each run's steps in [0, 1), "
                         f"got {cfg.optim.warmup_fraction}")
    if cfg.eval_tokens < 1:
        raise LmlabError(f"--eval-tokens must be positive, got {cfg.eval_tokens}")
    return plan_grid(list(cfg.budgets), list(cfg.sizes), family=cfg.family, head_dim=cfg.head_dim,
                     aspect=cfg.aspect, vocab_size=vocab_size, block_size=cfg.block_size,
                     batch_size=cfg.batch_size, flops=cfg.flops)


def _row(run: SweepRun, loss: float, bpb: float | None, eval_tokens: int, seconds: float | None) -> dict:
    return {"name": run.name, "N": run.params, "D": run.tokens, "C": run.compute, "loss": round(loss, 6),
            "budget": run.budget, "params_total": run.params, "N_nonembedding": run.params_non_embedding,
            "flops_per_token": run.flops_per_token, "C_6ND": run.compute_6nd, "d_model": run.d_model,
            "n_layer": run.n_layer, "n_head": run.n_head, "d_ff": run.d_ff, "steps": run.steps,
            "seconds": None if seconds is None else round(float(seconds), 2),
            "val_bpb": None if bpb is None else round(bpb, 6), "eval_tokens": eval_tokens}


def print_grid(grid: Grid, flops: str) -> None:
    """Print the planned grid as a table: name, shape, N, FLOPs/token, D, steps, C and C/budget."""
    from lmlab.console import human

    print(f"{len(grid.runs)} runs, {grid.tokens_per_step} tokens per step; C = FLOPs/token ({flops}) x D")
    print(f"  {'name':<18}{'d_model':>8}{'layers':>7}{'heads':>6}{'N':>9}{'N non-emb':>10}{'FLOPs/tok':>11}"
          f"{'D':>9}{'steps':>7}{'C':>10}{'C/budget':>9}")
    for r in grid.runs:
        print(f"  {r.name:<18}{r.d_model:>8}{r.n_layer:>7}{r.n_head:>6}{human(r.params):>9}"
              f"{human(r.params_non_embedding):>10}{r.flops_per_token:>11.4g}{human(r.tokens):>9}{r.steps:>7}"
              f"{r.compute:>10.3g}{r.compute / r.budget:>9.3f}")
    for s in grid.skipped:
        print(f"  skipped {s['name']}: {s['reason']}")
    worst = max((r.compute / r.budget for r in grid.runs), default=1.0)
    if worst > 1.05:
        print(f"note: rounding up to whole steps spends up to {worst - 1:.0%} more than a budget; raise the "
              "budgets or lower --batch-size so IsoFLOP groups stay tight")


def report_settings(cfg: SweepConfig) -> dict[str, Any]:
    """The settings of a sweep that its report lists: what every run trains and how it is scored."""
    o = cfg.optim
    return {"data": cfg.data, "family": cfg.family,
            "budgets (FLOPs)": ", ".join(f"{b:.3g}" for b in cfg.budgets),
            "sizes": ", ".join(str(s) for s in cfg.sizes), "head dim": cfg.head_dim,
            "d_model per layer": cfg.aspect, "FLOP count": cfg.flops, "block size": cfg.block_size,
            "batch size": cfg.batch_size,
            "learning rate": f"{o.lr:g} to {o.min_lr:g}, warmup {o.warmup_fraction:g} of each run",
            "validation tokens": cfg.eval_tokens, "vocabulary": cfg.vocab_size, "seed": cfg.seed,
            "precision": cfg.precision, "device": cfg.device}


def run_sweep(cfg: SweepConfig) -> int:
    """Plan and train the sweep ``cfg`` (or only print the grid with ``dry_run``); return an exit status.

    Writes SWEEP/config.yaml, SWEEP/runs/<name>/ (an ``lmlab pretrain`` run folder each), appends
    one row per finished, evaluated run to SWEEP/runs.csv (rewritten atomically) and, once every
    run is done, SWEEP/report.md (settings and the table).
    Returns 130 when a run was interrupted (rerun the same command to resume it).
    """
    from lmlab.config import save_config
    from lmlab.scaling.report import write_sweep_report

    vocab = resolve_vocab(cfg)
    grid = plan_from_config(cfg, vocab)
    if cfg.dry_run:
        if cfg.json:
            print(json.dumps({"vocab_size": vocab, "tokens_per_step": grid.tokens_per_step,
                              "flops": cfg.flops, "runs": [r.as_dict() for r in grid.runs],
                              "skipped": grid.skipped}))
        else:
            print_grid(grid, cfg.flops)
        return 0
    if cfg.out is None:
        raise LmlabError("a sweep needs --out SWEEP (the sweep folder)")
    from lmlab.data.prepare import load_prepared
    from lmlab.device import resolve_device

    resolved = dataclasses.replace(cfg, vocab_size=vocab, dry_run=False, json=False)
    out = Path(cfg.out)
    _check_same_sweep(resolved, out)
    data = load_prepared(cfg.data)
    device = resolve_device(cfg.device)
    save_config(resolved, out / "config.yaml")
    csv_path = out / "runs.csv"
    rows: list[dict[str, Any]] = list(read_rows(csv_path))
    done = {r["name"]: r for r in rows}
    report = {"trained": [], "done_before": [], "skipped": grid.skipped}
    if not cfg.json:
        print(f"sweep {out}: {len(grid.runs)} runs ({len(done.keys() & {r.name for r in grid.runs})} done "
              f"before), {len(grid.skipped)} skipped", flush=True)
    t0 = time.perf_counter()
    for i, run in enumerate(grid.runs, start=1):
        head = f"[{i}/{len(grid.runs)}] {run.name}"
        if run.name in done:
            report["done_before"].append(run.name)
            if not cfg.json:
                print(f"{head}: done before (loss {float(done[run.name]['loss']):.4f}), skipped", flush=True)
            continue
        if not cfg.json:
            print(f"{head}: N {run.params:,}, D {run.tokens:,} tokens in {run.steps} steps, "
                  f"C {run.compute:.3g}", flush=True)
        try:
            what, seconds = _train(cfg, run, vocab)
        except KeyboardInterrupt:
            print(f"interrupted during {run.name}; rerun the same command to resume the sweep", flush=True)
            return 130
        loss, bpb, n_eval = _evaluate(cfg, run, data, device)
        row = _row(run, loss, bpb, n_eval, seconds)
        rows.append(row)
        write_rows(csv_path, rows)
        report["trained"].append(run.name)
        if not cfg.json:
            extra = f", {bpb:.4f} bits/byte" if bpb is not None else ""
            took = f" in {seconds:.1f}s" if seconds is not None else ""
            print(f"{head}: {what}{took}; val loss {loss:.4f} nats/token{extra}", flush=True)
    by_name = {r["name"]: r for r in read_rows(csv_path)}
    table = [by_name[r.name] for r in grid.runs if r.name in by_name]
    write_sweep_report(out, report_settings(resolved), table, grid.skipped)
    if cfg.json:
        print(json.dumps({"out": str(out), "runs_csv": str(csv_path), **report, "runs": table}))
        return 0
    print(f"{len(report['trained'])} runs trained in {time.perf_counter() - t0:.1f}s; {csv_path} holds "
          f"{len(by_name)} runs")
    print(f"  {'name':<18}{'N':>10}{'D':>10}{'C':>10}{'loss':>8}{'bits/byte':>10}")
    for r in table:
        bpb = f"{float(r['val_bpb']):.4f}" if r.get("val_bpb") else "-"
        print(f"  {r['name']:<18}{int(r['N']):>10,}{int(r['D']):>10,}{float(r['C']):>10.3g}"
              f"{float(r['loss']):>8.4f}{bpb:>10}")
    print(f"wrote {out / 'report.md'}; fit scaling laws with: lmlab scaling fit {out} --approach 2   "
          "(or 1, 3, kaplan)")
    return 0
