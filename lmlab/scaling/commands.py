"""CLI commands: ``lmlab scaling plan`` (allocate a budget by a published law) and ``lmlab scaling fit``
(fit scaling laws to a table of runs)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmlab.config import arg, save_config
from lmlab.errors import LmlabError

LawName = Literal["hoffmann", "hoffmann-exact", "epoch", "kaplan", "all"]

def human(x: float) -> str:
    """Format a count with a K/M/B/T suffix (3 significant digits)."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


@dataclass
class PlanConfig:
    compute: float | None = arg(None, "training budget in FLOPs, e.g. 5.76e23 (or give --gpu-hours)")
    gpu_hours: float | None = arg(None, "budget as accelerator-hours summed over devices; "
                                        "needs --flops-per-s")
    flops_per_s: float | None = arg(None, "peak FLOP/s of one accelerator at the training precision, "
                                          "e.g. 989e12 for an H100 SXM in dense bf16")
    mfu: float = arg(0.4, "model FLOPs utilisation: the share of peak that training achieves")
    law: LawName = arg("epoch", "hoffmann (Chinchilla, as printed), hoffmann-exact (unrounded), "
                                "epoch (Besiroglu et al. 2024 refit), kaplan, or all")
    json: bool = arg(False, "print the result as one JSON object")


def plan(cfg: PlanConfig) -> None:
    """Split a training budget between model size and tokens by a published scaling law.

    Prints the compute-optimal parameter count N_opt, training tokens D_opt, tokens per
    parameter and the predicted loss. Chinchilla laws (hoffmann, hoffmann-exact, epoch)
    minimise L = E + A/N^alpha + B/D^beta under C = 6ND in closed form; kaplan uses
    Kaplan et al.'s N_opt = 1.3e9 C^0.73, D_opt = 2e10 C^0.27 (C in PF-days). Losses are
    nats/token on each paper's own data, so compare allocations, not losses, with your runs.

    Examples:
      lmlab scaling plan --compute 5.76e23 --law hoffmann-exact
      lmlab scaling plan --gpu-hours 1000 --flops-per-s 989e12 --mfu 0.4 --law all --json
    """
    from lmlab.scaling.laws import LAWS, PF_DAY_FLOPS, compute_from_gpu_hours
    from lmlab.scaling.laws import plan as allocate

    inputs: dict[str, float] = {}
    if cfg.compute is not None and cfg.gpu_hours is not None:
        raise LmlabError("give the budget once: either --compute FLOPS or --gpu-hours with --flops-per-s")
    if cfg.gpu_hours is not None:
        if cfg.flops_per_s is None:
            raise LmlabError("--gpu-hours needs --flops-per-s (peak FLOP/s of one accelerator, e.g. 989e12)")
        compute = compute_from_gpu_hours(cfg.gpu_hours, cfg.flops_per_s, cfg.mfu)
        inputs = {"gpu_hours": cfg.gpu_hours, "flops_per_s": cfg.flops_per_s, "mfu": cfg.mfu}
    elif cfg.compute is not None:
        compute = cfg.compute
    else:
        raise LmlabError("no budget given; pass --compute FLOPS (e.g. 5.76e23) "
                         "or --gpu-hours H --flops-per-s F")
    names = list(LAWS) if cfg.law == "all" else [cfg.law]
    plans = [allocate(compute, name) for name in names]
    if cfg.json:
        print(json.dumps({"compute_flops": compute, "pf_days": compute / PF_DAY_FLOPS, "inputs": inputs,
                          "plans": [p.as_dict() for p in plans]}))
        return
    head = f"budget  {compute:.3g} FLOPs ({compute / PF_DAY_FLOPS:,.4g} PF-days)"
    if inputs:
        head += f" = {cfg.gpu_hours:g} GPU-hours x {cfg.flops_per_s:.3g} FLOP/s x MFU {cfg.mfu:g}"
    print(head)
    print(f"  {'law':<16}{'N_opt':>9}{'D_opt':>9}{'tokens/param':>14}{'loss':>8}")
    for p in plans:
        print(f"  {p.law:<16}{human(p.n_params):>9}{human(p.n_tokens):>9}{p.tokens_per_param:>14.1f}"
              f"{p.loss:>8.3f}")
    print("loss: nats/token on the law's own data (MassiveText; WebText2 for kaplan), not on yours")
    if "kaplan" in names:
        print("kaplan: N counts non-embedding parameters; its Table 6 fit has 6 N D != C "
              "(it is stated for C_min at small batch)")


@dataclass
class FitConfig:
    source: Path | None = arg(None, "a CSV with columns N,D,loss[,C] or a sweep folder holding runs.csv",
                              positional=True)
    approach: str = arg("3", "1 (loss-vs-compute envelope), 2 (IsoFLOP parabolas), 3 (parametric "
                             "L = E + A/N^alpha + B/D^beta), or kaplan (L(N), L(D), L(N,D) power laws)")
    out: Path | None = arg(None, "folder for fit.json, config.yaml and the plots (default: "
                                 "SWEEP_DIR/fit-APPROACH, or CSV_DIR/CSV_NAME-fit-APPROACH)")
    n_column: str = arg("N", "CSV column to use as N, e.g. a non-embedding parameter count for Kaplan fits")
    loss_column: str = arg("loss", "CSV column to use as the loss (nats/token)")
    bootstrap: int = arg(200, "approach 3: bootstrap resamples for the 95%% intervals (0: none)")
    grid: Literal["coarse", "paper"] = arg("coarse", "approach 3 starting points: coarse (128) or paper "
                                                     "(Hoffmann et al.'s 4500, about 35x slower)")
    group_tol: float = arg(0.05, "approach 2: runs within this many decades of compute "
                                 "form one IsoFLOP group")
    seed: int = arg(0, "bootstrap random seed")
    plots: bool = arg(True, "write PNG plots")
    json: bool = arg(False, "print the result as one JSON object")


def default_fit_out(source: Path, approach: str) -> Path:
    """Default output folder: SWEEP_DIR/fit-APPROACH, or CSV_DIR/<csv stem>-fit-APPROACH."""
    if source.is_dir():
        return source / f"fit-{approach}"
    return source.parent / f"{source.stem}-fit-{approach}"


def _fmt(v: float) -> str:
    return f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.4e}"


def fit(cfg: FitConfig) -> None:
    """Fit scaling laws to a table of training runs and plot them.

    SOURCE is a CSV with columns N (parameters), D (training tokens), loss (nats/token)
    and optionally C (training FLOPs, default 6ND), or a sweep folder holding runs.csv.
    Approaches follow Hoffmann et al. 2022: 1 fits N_opt, D_opt against C on the lower
    envelope of loss vs compute; 2 fits a parabola in log N per compute budget and power
    laws through the valleys; 3 fits L = E + A/N^alpha + B/D^beta (Huber loss on log loss,
    L-BFGS from a grid, bootstrap intervals). kaplan fits Kaplan et al.'s L(N), L(D) and
    L(N, D). Prints the constants with 95% intervals and writes OUT/fit.json, the plots
    and OUT/config.yaml. A fit that does not converge is an error, not a result.

    Example:
      lmlab scaling fit runs/sweep --approach 2
    """
    from lmlab.fileio import write_json
    from lmlab.scaling.fit import optimum_at, read_runs, run_fit

    if cfg.source is None:
        raise LmlabError("give SOURCE: a CSV with columns N,D,loss[,C] or a sweep folder holding runs.csv")
    approach = str(cfg.approach).strip().lower()
    if approach not in ("1", "2", "3", "kaplan"):
        raise LmlabError(f"--approach {cfg.approach!r} is not one of 1, 2, 3, kaplan")
    if cfg.bootstrap < 0:
        raise LmlabError("--bootstrap must be 0 or more")
    if not (cfg.group_tol > 0):
        raise LmlabError("--group-tol must be positive (decades of compute, e.g. 0.05)")
    table = read_runs(cfg.source, n_column=cfg.n_column, loss_column=cfg.loss_column)
    result = run_fit(table, approach, tol_decades=cfg.group_tol, grid=cfg.grid, bootstrap=cfg.bootstrap,
                     seed=cfg.seed, progress=not cfg.json)
    c_max = float(table.C.max())
    optimum = optimum_at(result, c_max)
    out = cfg.out or default_fit_out(Path(cfg.source), approach)
    plots = []
    if cfg.plots:
        from lmlab.scaling.plots import write_plots

        plots = [str(p) for p in write_plots(result, out, cfg.group_tol)]
    record = result.as_dict() | {"source": table.source, "optimum_at_max_compute": optimum, "plots": plots}
    write_json(out / "fit.json", record)
    save_config(cfg, out / "config.yaml")
    if cfg.json:
        print(json.dumps(record | {"out": str(out)}))
        return
    title = {"1": "Approach 1 (envelope of loss vs compute)", "2": "Approach 2 (IsoFLOP profiles)",
             "3": "Approach 3 (parametric loss)", "kaplan": "Kaplan et al. power laws"}[approach]
    print(f"{title} on {len(table)} runs from {table.source}")
    print(f"  {result.formula}")
    width = max(len(k) for k in result.params)
    for name, est in result.params.items():
        has_ci = est.lo is not None and math.isfinite(est.lo)
        ci = f"   95% CI [{_fmt(est.lo)}, {_fmt(est.hi)}]" if has_ci else ""
        print(f"  {name:<{width}}  {_fmt(est.value):>11}{ci}")
    if optimum:
        line = (f"at the largest budget here, C = {c_max:.3g}: N_opt = {human(optimum['n_params'])}, "
                f"D_opt = {human(optimum['n_tokens'])} ({optimum['tokens_per_param']:.1f} tokens/param)")
        print(line + (f", loss {optimum['loss']:.4g}" if "loss" in optimum else ""))
    for note in result.notes:
        print(f"  note: {note}")
    print(f"wrote {out / 'fit.json'}" + (f" and {len(plots)} plots: {', '.join(Path(p).name for p in plots)}"
                                        if plots else ""))
