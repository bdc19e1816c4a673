"""Fitting scaling laws to a table of training runs.

A table has one row per run (or per evaluated checkpoint): N parameters, D training
tokens, the final loss, and optionally the training compute C in FLOPs (6 N D when
absent). Four fits, following the papers:

* Approach 1 (Hoffmann et al. 2022, sec. 3.1): the lower envelope of loss against
  compute; the runs on it give N_opt and D_opt, fitted as power laws of C.
* Approach 2 (sec. 3.2): runs grouped by compute budget (IsoFLOP profiles); a parabola
  in log N per group locates the valley; power laws of C through the valleys.
* Approach 3 (sec. 3.3, App. D.2): L = E + A/N^alpha + B/D^beta fitted in the
  log-sum-exp form log L = LSE(a - alpha log N, b - beta log D, e) with a Huber loss
  (delta 1e-3) on log loss, summed (Besiroglu et al. 2024 show that averaging stalls
  L-BFGS), minimised by L-BFGS from a grid of starting points; bootstrap intervals.
* Kaplan et al. 2020: L(N) and L(D) power laws on the lower envelopes and the joint
  L(N, D) of their eq. 1.5.

Every fit returns a :class:`FitResult` (estimates with 95% intervals, notes, and what the
plots need); a fit that does not converge raises LmlabError instead of reporting numbers.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.errors import LmlabError

HUBER_DELTA = 1e-3
# Hoffmann et al. App. D.2: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1},
# a, b in {0, 5, ..., 25}: 4500 starting points.
PAPER_GRID = {
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
}
# A 128-start subset of the paper's grid. On synthetic IsoFLOP data about 30% of the
# paper's starts reach the global optimum, the rest stall in degenerate basins (an exponent
# at 0 or 2, a or b at 0), so this subset avoids those and finds the same optimum at 1/35
# of the cost; `--grid paper` runs all 4500 starts.
COARSE_GRID = {
    "alpha": (0.5, 1.0),
    "beta": (0.5, 1.0),
    "e": (-0.5, 0.5),
    "a": (5.0, 10.0, 15.0, 20.0),
    "b": (5.0, 10.0, 15.0, 20.0),
}
GRIDS = {"paper": PAPER_GRID, "coarse": COARSE_GRID}


@dataclass
class RunTable:
    """Training runs: parameters N, tokens D, final loss, and training FLOPs C (6 N D when not given)."""

    N: np.ndarray
    D: np.ndarray
    loss: np.ndarray
    C: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return len(self.N)

    def subset(self, idx: np.ndarray) -> RunTable:
        """Return the rows at ``idx`` (indices or a boolean mask) as a new table."""
        return RunTable(self.N[idx], self.D[idx], self.loss[idx], self.C[idx], self.source)

    @classmethod
    def from_arrays(cls, N, D, loss, C=None, source: str = "") -> RunTable:
        """Build a table from arrays, checking that every value is finite and positive."""
        n, d, l = (np.asarray(x, dtype=float).ravel() for x in (N, D, loss))
        c = 6.0 * n * d if C is None else np.asarray(C, dtype=float).ravel()
        if not (len(n) == len(d) == len(l) == len(c)):
            raise LmlabError("N, D, loss and C must have the same length")
        for name, arr in (("N", n), ("D", d), ("loss", l), ("C", c)):
            bad = np.flatnonzero(~np.isfinite(arr) | (arr <= 0))
            if bad.size:
                raise LmlabError(f"{name} must be a positive number in every run; row {bad[0] + 1} has "
                                 f"{arr[bad[0]]!r}; fix or drop that run")
        return cls(n, d, l, c, source)


def read_runs(path: str | Path, n_column: str = "N", loss_column: str = "loss") -> RunTable:
    """Read runs from a CSV with columns N, D, loss and optional C (any order, any case, extra columns
    ignored), or from SWEEP_DIR/runs.csv when ``path`` is a folder. ``n_column`` and ``loss_column`` pick
    other columns as N and loss (e.g. non-embedding parameters, validation loss). Returns a RunTable."""
    p = Path(path)
    if p.is_dir():
        p = p / "runs.csv"
    if not p.is_file():
        raise LmlabError(f"{p} does not exist; give a CSV with columns N,D,loss[,C] or a sweep folder "
                         "holding runs.csv")
    wanted = {"N": n_column, "D": "D", "loss": loss_column, "C": "C"}
    with open(p, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [(h or "").strip() for h in (reader.fieldnames or [])]
        by_lower = {h.lower(): h for h in header}
        missing = [wanted[c] for c in ("N", "D", "loss") if wanted[c].lower() not in by_lower]
        if missing:
            found = ", ".join(header) or "none"
            raise LmlabError(f"{p} lacks column(s) {', '.join(missing)} (found: {found}); "
                             "the table needs N (parameters), D (tokens), loss, and optionally C (FLOPs)")
        rows = list(reader)
    cols: dict[str, list[float]] = {"N": [], "D": [], "loss": [], "C": []}
    for lineno, row in enumerate(rows, start=2):
        row = {(k or "").strip(): v for k, v in row.items()}
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        for col, name in wanted.items():
            key = by_lower.get(name.lower())
            raw = (row.get(key) or "").strip() if key else ""
            if col == "C" and raw == "":
                cols["C"].append(math.nan)
                continue
            try:
                cols[col].append(float(raw))
            except ValueError:
                msg = f"{p}, line {lineno}: {name}={raw!r} is not a number; fix that row"
                raise LmlabError(msg) from None
    c = np.array(cols["C"], dtype=float)
    n, d = np.array(cols["N"]), np.array(cols["D"])
    c = np.where(np.isnan(c), 6.0 * n * d, c)
    table = RunTable.from_arrays(n, d, cols["loss"], c, source=str(p))
    if len(table) == 0:
        raise LmlabError(f"{p} has no runs; add rows N,D,loss")
    return table


@dataclass
class Estimate:
    """A fitted quantity with a 95% interval (None when the data cannot give one)."""

    value: float
    lo: float | None = None
    hi: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return ``{"value": v, "ci95": [lo, hi] or None}``."""
        ci = None if self.lo is None or self.hi is None else [self.lo, self.hi]
        return {"value": self.value, "ci95": ci}


@dataclass
class FitResult:
    """The outcome of one fit: named estimates, the formula they belong to, notes, plot data."""

    approach: str
    formula: str
    n_runs: int
    params: dict[str, Estimate]
    notes: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)  # arrays and callables for plots.py

    def as_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-friendly dict (without the plot data)."""
        return {"approach": self.approach, "formula": self.formula, "n_runs": self.n_runs,
                "params": {k: v.as_dict() for k, v in self.params.items()}, "notes": list(self.notes)}


def _need(n: int, p: int, what: str) -> None:
    if n < p + 1:
        raise LmlabError(f"{what} needs at least {p + 1} points to fit {p} parameters with an error "
                         f"estimate, got {n}; add runs")


@dataclass
class PowerLaw:
    """y = k x^slope fitted by least squares in log-log space, with t-based 95% intervals."""

    slope: Estimate
    coef: Estimate  # k
    cov: np.ndarray  # covariance of (ln k, slope)
    t95: float  # two-sided 95% t quantile for the fit's degrees of freedom

    def __call__(self, x):
        return self.coef.value * np.asarray(x, dtype=float) ** self.slope.value

    def scale(self) -> tuple[Estimate, Estimate]:
        """Rewrite y = k x^slope as y = (X_c / x)^alpha; return (alpha, X_c) with 95% intervals
        (X_c by the delta method on ln X_c = ln k / alpha)."""
        alpha = -self.slope.value
        ln_k = math.log(self.coef.value)
        ln_xc = ln_k / alpha
        grad = np.array([1.0 / alpha, ln_k / alpha**2])  # d ln X_c / d (ln k, slope)
        half = self.t95 * math.sqrt(max(float(grad @ self.cov @ grad), 0.0))
        return (Estimate(alpha, -self.slope.hi, -self.slope.lo),
                Estimate(math.exp(ln_xc), math.exp(ln_xc - half), math.exp(ln_xc + half)))


def fit_power_law(x, y, what: str) -> PowerLaw:
    """Fit y = k x^slope by linear regression of log y on log x; return slope and k with 95% intervals."""
    from scipy import stats

    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    _need(len(lx), 2, what)
    if np.ptp(lx) == 0:
        raise LmlabError(f"{what}: all points share one x value; the runs must span a range")
    res = stats.linregress(lx, ly)
    t = float(stats.t.ppf(0.975, len(lx) - 2))
    var_s = res.stderr**2
    cov_is = -lx.mean() * var_s  # covariance of intercept and slope in simple regression
    cov = np.array([[res.intercept_stderr**2, cov_is], [cov_is, var_s]])
    slope = Estimate(float(res.slope), float(res.slope - t * res.stderr), float(res.slope + t * res.stderr))
    ic = res.intercept_stderr
    coef = Estimate(float(np.exp(res.intercept)), float(np.exp(res.intercept - t * ic)),
                    float(np.exp(res.intercept + t * ic)))
    return PowerLaw(slope, coef, cov, t)


def lower_envelope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points that have lower y than every point with smaller x (ties in x: the lowest y),
    sorted by x: the lower envelope (Pareto front) of y against x."""
    order = np.lexsort((y, x))
    keep, best = [], math.inf
    for i in order:
        if y[i] < best:
            keep.append(i)
            best = y[i]
    return np.array(keep, dtype=int)


# ---------------------------------------------------------------- Approach 1


def fit_approach1(table: RunTable) -> FitResult:
    """Approach 1: take the runs on the lower envelope of loss vs compute and fit N_opt = k_N C^a,
    D_opt = k_D C^b through them. Returns a FitResult with a, b, k_N, k_D."""
    env = lower_envelope(table.C, table.loss)
    _need(len(env), 2, "Approach 1 (runs on the loss-vs-compute envelope)")
    n_law = fit_power_law(table.C[env], table.N[env], "Approach 1, N_opt vs C")
    d_law = fit_power_law(table.C[env], table.D[env], "Approach 1, D_opt vs C")
    notes = [f"{len(env)} of {len(table)} runs lie on the lower envelope of loss vs compute",
             "intervals are 95% t-intervals of the log-log regressions"]
    if len(env) < 5:
        notes.append("few envelope points: log intermediate checkpoints as extra rows (N, D so far, loss) "
                     "to trace the envelope as the paper does")
    return FitResult(
        "1", "N_opt = k_N C^a, D_opt = k_D C^b on the loss-vs-compute envelope", len(table),
        {"a": n_law.slope, "b": d_law.slope, "k_N": n_law.coef, "k_D": d_law.coef}, notes,
        {"table": table, "envelope": env, "n_law": n_law, "d_law": d_law,
         "opt_C": table.C[env], "opt_N": table.N[env], "opt_D": table.D[env]},
    )


# ---------------------------------------------------------------- Approach 2


def group_by_compute(C: np.ndarray, tol_decades: float) -> list[np.ndarray]:
    """Group runs whose compute lies within ``tol_decades`` (log10) of the smallest in the group.
    Returns a list of index arrays, by increasing compute."""
    lc = np.log10(C)
    order = np.argsort(lc, kind="stable")
    groups: list[list[int]] = []
    start = -math.inf
    for i in order:
        if lc[i] - start > tol_decades:
            groups.append([])
            start = lc[i]
        groups[-1].append(int(i))
    return [np.array(g) for g in groups]


@dataclass
class Valley:
    """One IsoFLOP profile: its budget, the fitted parabola in log N (and log D), and the minimum."""

    compute: float
    idx: np.ndarray
    coef_n: np.ndarray  # loss = c0 x^2 + c1 x + c2, x = ln N
    n_opt: float
    d_opt: float
    loss_opt: float


def fit_valleys(table: RunTable, tol_decades: float = 0.05) -> tuple[list[Valley], list[str]]:
    """Fit a parabola in ln N (and one in ln D) to every IsoFLOP group with 3+ distinct sizes and a valley
    inside its sampled range. Returns the valleys and notes on the groups that were skipped."""
    valleys, notes = [], []
    for g in group_by_compute(table.C, tol_decades):
        c = float(np.exp(np.mean(np.log(table.C[g]))))
        x, xd, y = np.log(table.N[g]), np.log(table.D[g]), table.loss[g]
        if len(np.unique(x)) < 3:
            if len(g) > 1:
                notes.append(f"C={c:.3g}: {len(np.unique(x))} model size(s), need 3 for a parabola; skipped")
            continue
        cn = np.polyfit(x, y, 2)
        cd = np.polyfit(xd, y, 2)
        if cn[0] <= 0 or cd[0] <= 0:
            notes.append(f"C={c:.3g}: loss vs size has no valley (parabola opens downward); skipped")
            continue
        xn, xdv = -cn[1] / (2 * cn[0]), -cd[1] / (2 * cd[0])
        if not (x.min() <= xn <= x.max()):
            notes.append(f"C={c:.3g}: valley at N={math.exp(xn):.3g} lies outside the sampled sizes "
                         f"[{math.exp(x.min()):.3g}, {math.exp(x.max()):.3g}]; skipped (widen that profile)")
            continue
        valleys.append(Valley(c, g, cn, math.exp(xn), math.exp(xdv), float(np.polyval(cn, xn))))
    return valleys, notes


def fit_approach2(table: RunTable, tol_decades: float = 0.05) -> FitResult:
    """Approach 2: IsoFLOP valleys (parabola in ln N per compute group), then N_opt = k_N C^a and
    D_opt = k_D C^b through the valley minima. Returns a FitResult with a, b, k_N, k_D."""
    valleys, notes = fit_valleys(table, tol_decades)
    if len(valleys) < 3:
        raise LmlabError(f"Approach 2 found {len(valleys)} IsoFLOP profile(s) with a valley, needs at "
                         "least 3: run 3+ compute budgets, each with 3+ model sizes around the optimum"
                         + (f" ({'; '.join(notes)})" if notes else ""))
    c = np.array([v.compute for v in valleys])
    n_law = fit_power_law(c, [v.n_opt for v in valleys], "Approach 2, N_opt vs C")
    d_law = fit_power_law(c, [v.d_opt for v in valleys], "Approach 2, D_opt vs C")
    notes = [f"{len(valleys)} IsoFLOP profiles with a valley; intervals are 95% t-intervals of the "
             "log-log regressions through the valley minima", *notes]
    return FitResult(
        "2", "N_opt = k_N C^a, D_opt = k_D C^b through the IsoFLOP valleys", len(table),
        {"a": n_law.slope, "b": d_law.slope, "k_N": n_law.coef, "k_D": d_law.coef}, notes,
        {"table": table, "valleys": valleys, "n_law": n_law, "d_law": d_law,
         "opt_C": c, "opt_N": np.array([v.n_opt for v in valleys]),
         "opt_D": np.array([v.d_opt for v in valleys])},
    )


# ---------------------------------------------------------------- Approach 3


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Limit scipy's OpenBLAS to one thread: L-BFGS-B makes BLAS calls on 5-vectors, and with idle
    threads spinning on a busy machine each call got about 15x slower (measured 1.5 s vs 28 s)."""
    import scipy.optimize  # noqa: F401  (loads scipy's OpenBLAS so the limit reaches it)

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1):
        yield


def _single_threaded(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with one_blas_thread():
            return fn(*args, **kwargs)

    return wrapper


# theta = (a, b, e, alpha, beta): log L = LSE(a - alpha ln N, b - beta ln D, e)


def huber_objective(theta: np.ndarray, lnN: np.ndarray, lnD: np.ndarray, lnL: np.ndarray,
                    delta: float = HUBER_DELTA) -> tuple[float, np.ndarray]:
    """Sum of Huber losses of the log-loss residuals, divided by delta so its scale does not stall the
    optimiser; returns (value, gradient) with respect to theta = (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = theta
    t0 = a - alpha * lnN
    t1 = b - beta * lnD
    m = np.maximum(np.maximum(t0, t1), e)
    x0, x1, x2 = np.exp(t0 - m), np.exp(t1 - m), np.exp(e - m)
    s = x0 + x1 + x2
    r = m + np.log(s) - lnL  # log L_hat - log L
    ar = np.abs(r)
    val = np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)).sum() / delta
    dr = np.clip(r, -delta, delta) / (delta * s)  # times the softmax weights x_k / s below
    g0, g1 = dr * x0, dr * x1
    grad = np.array([g0.sum(), g1.sum(), (dr * x2).sum(), -(g0 @ lnN), -(g1 @ lnD)])
    return float(val), grad


def _minimise(theta0, lnN, lnD, lnL, maxiter: int, tight: bool = False):
    """L-BFGS-B from theta0: scipy's default tolerances for the grid search, tight ones to polish."""
    from scipy.optimize import minimize

    opts: dict[str, Any] = {"maxiter": maxiter, "maxfun": 4 * maxiter}
    if tight:
        opts.update(ftol=1e-15, gtol=1e-10)
    return minimize(huber_objective, np.asarray(theta0, dtype=float), args=(lnN, lnD, lnL), jac=True,
                    method="L-BFGS-B", options=opts)


def _converged(res, lnN, lnD, lnL, maxiter: int) -> tuple[bool, str]:
    """Judge a polished L-BFGS result: finite, not stopped by the iteration limit, at a stationary
    point (a fresh restart from it cannot lower the objective) and with positive exponents."""
    if not np.all(np.isfinite(res.x)) or not np.isfinite(res.fun):
        return False, "the parameters diverged"
    if res.nit >= maxiter:
        return False, f"it hit the iteration limit ({maxiter})"
    again = _minimise(res.x, lnN, lnD, lnL, maxiter, tight=True)
    if res.fun - again.fun > 1e-6 * max(1.0, abs(res.fun)):
        return False, (f"a restart from its end point still lowered the objective "
                       f"({res.fun:.6g} -> {again.fun:.6g})")
    alpha, beta = res.x[3], res.x[4]
    if alpha <= 0 or beta <= 0:
        return False, f"an exponent is not positive (alpha={alpha:.3g}, beta={beta:.3g}): the data do not " \
                      "show loss falling with both N and D"
    return True, ""


def _theta_to_params(theta: np.ndarray) -> dict[str, float]:
    a, b, e, alpha, beta = (float(v) for v in theta)
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta,
            "a": beta / (alpha + beta), "b": alpha / (alpha + beta)}


@_single_threaded
def fit_approach3(table: RunTable, *, grid: str | dict = "paper", bootstrap: int = 200, seed: int = 0,
                  maxiter: int = 2000, progress: bool = False) -> FitResult:
    """Approach 3: fit L = E + A/N^alpha + B/D^beta (Huber delta 1e-3 on log loss, L-BFGS from every
    start in ``grid``), then refit ``bootstrap`` resamples of the runs (started from the best fit) for
    95% percentile intervals. Returns E, A, B, alpha, beta and the allocation exponents a, b.
    Raises LmlabError if the best fit has not converged."""
    _need(len(table), 5, "Approach 3")
    if len(np.unique(table.N)) < 2 or len(np.unique(table.D)) < 2:
        raise LmlabError("Approach 3 needs runs with several model sizes N and token counts D; "
                         "all runs share one N or one D")
    lnN, lnD, lnL = np.log(table.N), np.log(table.D), np.log(table.loss)
    g = GRIDS[grid] if isinstance(grid, str) else grid
    starts = list(itertools.product(g["a"], g["b"], g["e"], g["alpha"], g["beta"]))
    results = []
    it = starts
    if progress:
        from lmlab.console import progress as bar

        it = bar(starts, desc="approach 3 starts", unit="start")
    for th in it:
        res = _minimise(th, lnN, lnD, lnL, maxiter)
        if np.isfinite(res.fun):
            results.append(res)
    if not results:
        raise LmlabError("Approach 3 did not converge: every start gave a non-finite objective; "
                         "check the losses are in nats and positive")
    results.sort(key=lambda r: r.fun)
    best = _minimise(results[0].x, lnN, lnD, lnL, maxiter, tight=True)
    ok, why = _converged(best, lnN, lnD, lnL, maxiter)
    if not ok:
        raise LmlabError(f"Approach 3 did not converge: {why}; add runs over a wider range of N and D, "
                         "or try --grid paper / a higher iteration limit")
    point = _theta_to_params(best.x)

    boots: list[dict[str, float]] = []
    failed = 0
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        it = range(bootstrap)
        if progress:
            from lmlab.console import progress as bar

            it = bar(it, desc="bootstrap", unit="fit")
        n = len(table)
        for _ in it:
            # each resample starts from the full-data optimum, as Besiroglu et al. do
            idx = rng.integers(0, n, n)
            r = _minimise(best.x, lnN[idx], lnD[idx], lnL[idx], maxiter)
            if not np.all(np.isfinite(r.x)) or r.nit >= maxiter or r.x[3] <= 0 or r.x[4] <= 0:
                failed += 1
                continue
            boots.append(_theta_to_params(r.x))
    params = {}
    for k, v in point.items():
        if len(boots) >= 10:
            vals = np.array([b[k] for b in boots])
            params[k] = Estimate(v, float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5)))
        else:
            params[k] = Estimate(v)
    notes = [f"best of {len(starts)} L-BFGS starts (Huber delta {HUBER_DELTA:g} on log loss, summed); "
             f"objective {best.fun:.6g}"]
    if bootstrap > 0:
        notes.append(f"95% intervals: percentiles of {len(boots)} bootstrap refits over resampled runs"
                     + (f" ({failed} resamples failed to converge and were dropped)" if failed else ""))
        if len(boots) < 10:
            notes.append("too few converged bootstrap refits for intervals")
    else:
        notes.append("no intervals: bootstrap disabled")
    k = flops_per_param_token(table)
    notes.append(f"compute-optimal allocation under C = k N D with k = {k:.3g}, the runs' median C/(ND) "
                 "(6 when C is 6ND): N_opt = G (C/k)^a, D_opt = (C/k) / N_opt")
    return FitResult("3", "L(N, D) = E + A / N^alpha + B / D^beta", len(table), params, notes,
                     {"table": table, "theta": best.x, "boots": boots})


def chinchilla_from_fit(result: FitResult):
    """Turn an Approach 3 result into a ChinchillaLaw (for predictions and the optimum)."""
    from lmlab.scaling.laws import ChinchillaLaw

    p = result.params
    return ChinchillaLaw("fit", E=p["E"].value, A=p["A"].value, B=p["B"].value, alpha=p["alpha"].value,
                         beta=p["beta"].value, source=result.formula)


# ---------------------------------------------------------------- Kaplan


def kaplan_nd_loss(theta: np.ndarray, n, d):
    """Kaplan eq. 1.5, L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D, theta = (ln N_c, ln D_c, alpha_N,
    alpha_D); returns the loss for arrays n, d."""
    ln_nc, ln_dc, an, ad = theta
    ln_n, ln_d = np.log(n), np.log(d)
    from scipy.special import logsumexp

    inner = logsumexp(np.stack([(an / ad) * (ln_nc - ln_n), ln_dc - ln_d]), axis=0)
    return np.exp(ad * inner)


def _fit_kaplan_nd(table: RunTable, n_law: PowerLaw, d_law: PowerLaw) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares fit of eq. 1.5 on log loss from several starts; returns (theta, 95% half-widths)."""
    from scipy import stats
    from scipy.optimize import least_squares

    lnL = np.log(table.loss)

    def resid(th):
        return np.log(kaplan_nd_loss(th, table.N, table.D)) - lnL

    # starts: the separate power laws (L = (X_c/X)^alpha means X_c = k^(1/alpha)), and Kaplan's constants
    def from_law(law: PowerLaw) -> tuple[float, float]:
        alpha = max(-law.slope.value, 1e-3)
        return math.log(law.coef.value) / alpha, alpha

    (ln_nc, an), (ln_dc, ad) = from_law(n_law), from_law(d_law)
    starts = [(ln_nc, ln_dc, an, ad), (math.log(6.4e13), math.log(1.8e13), 0.076, 0.103)]
    best = None
    for s in starts:
        try:
            r = least_squares(resid, np.array(s), method="lm", max_nfev=20000, xtol=1e-12, ftol=1e-12)
        except ValueError:
            continue
        if np.all(np.isfinite(r.x)) and (best is None or r.cost < best.cost):
            best = r
    if best is None or not best.success or best.x[2] <= 0 or best.x[3] <= 0:
        raise LmlabError("the Kaplan L(N, D) fit did not converge; add runs spanning more N and D")
    dof = len(table) - 4
    s2 = 2 * best.cost / dof
    try:
        cov = np.linalg.inv(best.jac.T @ best.jac) * s2
        half = stats.t.ppf(0.975, dof) * np.sqrt(np.clip(np.diag(cov), 0, None))
    except np.linalg.LinAlgError:
        half = np.full(4, np.nan)
    return best.x, half


@_single_threaded
def fit_kaplan(table: RunTable) -> FitResult:
    """Kaplan et al. fits: L(N) = (N_c/N)^alpha_N on the lower envelope of loss vs N, L(D) = (D_c/D)^alpha_D
    on the envelope vs D, and eq. 1.5 L(N, D) on all runs. Returns their constants with 95% intervals."""
    _need(len(table), 4, "the Kaplan L(N, D) fit")
    env_n = lower_envelope(table.N, table.loss)
    env_d = lower_envelope(table.D, table.loss)
    n_law = fit_power_law(table.N[env_n], table.loss[env_n], "Kaplan L(N) (envelope of loss vs N)")
    d_law = fit_power_law(table.D[env_d], table.loss[env_d], "Kaplan L(D) (envelope of loss vs D)")

    alpha_n, n_c = n_law.scale()
    alpha_d, d_c = d_law.scale()
    theta, half = _fit_kaplan_nd(table, n_law, d_law)
    ok = np.isfinite(half)

    def est(v, h, log=False):
        v, h = float(v), float(h)
        if not np.isfinite(h):
            return Estimate(math.exp(v) if log else v)
        return Estimate(math.exp(v), math.exp(v - h), math.exp(v + h)) if log else Estimate(v, v - h, v + h)

    params = {
        "alpha_N": alpha_n, "N_c": n_c, "alpha_D": alpha_d, "D_c": d_c,
        "nd_alpha_N": est(theta[2], half[2]), "nd_alpha_D": est(theta[3], half[3]),
        "nd_N_c": est(theta[0], half[0], log=True), "nd_D_c": est(theta[1], half[1], log=True),
    }
    notes = [f"L(N) is fitted on the {len(env_n)} runs that beat every smaller model, L(D) on the "
             f"{len(env_d)} that beat every run with fewer tokens; these approximate Kaplan's converged and "
             "early-stopped curves only when some runs are not limited by the other variable",
             "nd_* are eq. 1.5 fitted to all runs by least squares on log loss",
             "95% intervals: t-intervals of the regressions (N_c, D_c by the delta method); "
             "the Jacobian of the least-squares fit for nd_*"]
    if not ok.all():
        notes.append("the L(N, D) covariance is singular; its intervals are omitted")
    return FitResult("kaplan", "L(N) = (N_c/N)^alpha_N; L(D) = (D_c/D)^alpha_D; "
                     "L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D", len(table), params, notes,
                     {"table": table, "env_n": env_n, "env_d": env_d, "n_law": n_law, "d_law": d_law,
                      "nd_theta": theta})


def run_fit(table: RunTable, approach: str, **kwargs) -> FitResult:
    """Dispatch to the fit for ``approach`` ('1', '2', '3' or 'kaplan'); return its FitResult."""
    if approach == "1":
        return fit_approach1(table)
    if approach == "2":
        return fit_approach2(table, **{k: v for k, v in kwargs.items() if k == "tol_decades"})
    if approach == "3":
        return fit_approach3(table, **{k: v for k, v in kwargs.items()
                                       if k in ("grid", "bootstrap", "seed", "maxiter", "progress")})
    if approach == "kaplan":
        return fit_kaplan(table)
    raise LmlabError(f"unknown approach {approach!r}; choose 1, 2, 3 or kaplan")


def flops_per_param_token(table: RunTable) -> float:
    """Return the runs' median C / (N D): 6 when C was taken as 6ND, more when it counts attention."""
    return float(np.median(table.C / (table.N * table.D)))


def optimum_at(result: FitResult, compute: float) -> dict[str, float] | None:
    """The fitted compute-optimal N and D (and, for Approach 3, the loss) at ``compute`` FLOPs, or None for
    fits that do not give an allocation (Kaplan).

    Approaches 1 and 2 read N and D off their power laws in C directly. Approach 3's L(N, D)
    is minimised under C = k N D with k the fitted runs' own FLOPs per parameter-token, so
    the compute means what it meant in the runs (6ND or a count including attention).
    """
    p = result.params
    if result.approach in ("1", "2"):
        n = p["k_N"].value * compute ** p["a"].value
        d = p["k_D"].value * compute ** p["b"].value
        return {"compute_flops": compute, "n_params": n, "n_tokens": d, "tokens_per_param": d / n}
    if result.approach == "3":
        k = flops_per_param_token(result.extras["table"])
        return chinchilla_from_fit(result).optimal(compute, k).as_dict() | {"law": "fit",
                                                                           "flops_per_param_token": k}
    return None
