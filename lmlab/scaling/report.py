"""What a scaling run shows: report.md of ``lmlab scaling fit`` (the runs, the fitted laws, the
compute-optimal allocation, the plots) and of ``lmlab scaling sweep`` (the grid's settings and table)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.console import human, short
from lmlab.fileio import write_text
from lmlab.markdown import code_block, escape, inline_code, settings_list, table
from lmlab.scaling.fit import FitResult, RunTable

REPORT = "report.md"
TITLES = {"1": "Approach 1 (envelope of loss vs compute)", "2": "Approach 2 (IsoFLOP profiles)",
          "3": "Approach 3 (parametric loss)", "kaplan": "Kaplan et al. power laws"}
PLOT_CAPTIONS = {"frontier.png": "loss against compute, every run",
                 "allocation.png": "compute-optimal N and D", "isoflops.png": "IsoFLOP profiles",
                 "contours.png": "fitted loss surface over N and D", "kaplan.png": "Kaplan power laws"}


def _runs_table(t: RunTable) -> str:
    order = np.lexsort((t.N, t.C))
    rows = [[f"{t.N[i]:,.0f}", f"{t.D[i]:,.0f}", f"{t.C[i]:.4g}", f"{t.loss[i]:.4f}"] for i in order]
    return table(["N (parameters)", "D (tokens)", "C (FLOPs)", "loss (nats/token)"], rows, left=0)


def _ci(lo: float | None, hi: float | None) -> str:
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "-"
    return f"[{short(lo)}, {short(hi)}]"


def _optimum_text(optimum: dict[str, float] | None, c_max: float) -> list[str]:
    if not optimum:
        return ["Kaplan's power laws give no allocation of a budget between N and D; fit approach 1, 2 or 3 "
                "for one.", ""]
    rows = [["compute C (FLOPs)", f"{optimum['compute_flops']:.4g}"],
            ["N_opt (parameters)", f"{human(optimum['n_params'])} ({optimum['n_params']:,.0f})"],
            ["D_opt (tokens)", f"{human(optimum['n_tokens'])} ({optimum['n_tokens']:,.0f})"],
            ["tokens per parameter", f"{optimum['tokens_per_param']:.2f}"]]
    if "loss" in optimum:
        rows.append(["predicted loss (nats/token)", f"{optimum['loss']:.4f}"])
    if "flops_per_param_token" in optimum:
        rows.append(["k in C = k N D", f"{optimum['flops_per_param_token']:.3g}"])
    return [f"At the largest budget among the runs, C = {c_max:.4g} FLOPs:", "",
            table(["quantity", "value"], rows), ""]


def write_fit_report(out: Path, result: FitResult, runs: RunTable, optimum: dict[str, float] | None,
                     plots: list[Path], options: dict[str, Any]) -> Path:
    """Write OUT/report.md of a scaling-law fit: the source and options, the runs, the fitted constants
    with their 95% intervals, the compute-optimal allocation at the largest budget, the notes and the
    plots (linked by name, as they lie beside it). Returns the report's path."""
    c_max = float(runs.C.max())
    params = [[escape(name), short(est.value), _ci(est.lo, est.hi)] for name, est in result.params.items()]
    lines = [
        f"# Scaling-law fit: {TITLES[result.approach]}",
        "",
        f"{result.n_runs} runs from {inline_code(runs.source)}; fitted law:",
        "",
        code_block(result.formula),
        "",
        settings_list(options),
        "",
        "## Fitted constants",
        "",
        table(["constant", "value", "95% interval"], params),
        "",
        "## Compute-optimal allocation",
        "",
        *_optimum_text(optimum, c_max),
    ]
    if result.notes:
        lines += ["## Notes", "", *(f"- {escape(n)}" for n in result.notes), ""]
    if plots:
        lines += ["## Plots", ""]
        for p in plots:
            name = Path(p).name
            lines += [f"![{PLOT_CAPTIONS.get(name, name)}]({name})", ""]
    lines += [f"## Runs ({len(runs)})", "", _runs_table(runs), ""]
    path = Path(out) / REPORT
    write_text(path, "\n".join(lines))
    return path


def write_sweep_report(out: Path, settings: dict[str, Any], rows: list[dict[str, str]],
                       skipped: list[dict[str, Any]]) -> Path:
    """Write SWEEP/report.md: the sweep's settings, one row per finished run of its grid (as runs.csv
    holds it: N, D, C, validation loss and bits per byte, seconds) and the command that fits it.
    Returns the report's path."""
    def cell(r: dict[str, str], key: str, fmt: str) -> str:
        v = (r.get(key) or "").strip()
        return format(float(v), fmt) if v else "-"

    body = [[inline_code(r["name"]), r["d_model"], r["n_layer"], cell(r, "N", ",.0f"), cell(r, "D", ",.0f"),
             cell(r, "C", ".4g"), cell(r, "steps", ".0f"), cell(r, "loss", ".4f"), cell(r, "val_bpb", ".4f"),
             cell(r, "seconds", ".1f")] for r in rows]
    lines = [
        "# IsoFLOP sweep",
        "",
        f"{len(rows)} runs: every model size trained on every compute budget, then scored on the same "
        "validation windows (loss in nats/token). C = training FLOPs per token x D, by the count below. "
        "The table is runs.csv; each run's folder is runs/NAME.",
        "",
        settings_list(settings),
        "",
        table(["run", "d_model", "layers", "N", "D", "C (FLOPs)", "steps", "val loss", "bits/byte",
               "seconds"], body),
        "",
    ]
    if skipped:
        lines += ["Skipped (the budget buys less than one step):", "",
                  *(f"- {inline_code(s['name'])}: {escape(s['reason'])}" for s in skipped), ""]
    lines += ["Fit scaling laws to it (each fit writes its own report.md in a folder beside runs.csv):", "",
              code_block(f"lmlab scaling fit {out} --approach 2", "sh"), ""]
    path = Path(out) / REPORT
    write_text(path, "\n".join(lines))
    return path
