"""PNG plots of scaling-law fits (matplotlib, Agg backend, no global pyplot state).

Which figures a fit gets:
* every fit: ``frontier.png``, loss against compute for all runs, coloured by model size;
* Approaches 1, 2, 3: ``allocation.png``, N_opt and D_opt against compute with the fit;
* Approaches 2, 3: ``isoflops.png``, loss against N per compute budget with the fitted valleys;
* Approach 3 and Kaplan: ``contours.png``, the fitted loss surface over (N, D) with the runs;
* Kaplan: ``kaplan.png``, the L(N) and L(D) power laws and observed vs predicted L(N, D).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lmlab.plotting import figure, save_png
from lmlab.scaling.fit import (
    FitResult,
    RunTable,
    chinchilla_from_fit,
    flops_per_param_token,
    group_by_compute,
    kaplan_nd_loss,
)


def _plain_log_y(ax) -> None:
    """Label a log-scaled loss axis with plain numbers (2.5, not 2.5x10^0)."""
    from matplotlib.ticker import FormatStrFormatter

    ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))


def _size_colours(table: RunTable):
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    norm = LogNorm(vmin=table.N.min(), vmax=max(table.N.max(), table.N.min() * 1.0001))
    return colormaps["viridis"], norm


def plot_frontier(result: FitResult, path: Path) -> Path:
    """Loss against compute for every run (coloured by N) with the fit's compute-optimal curve."""
    t: RunTable = result.extras["table"]
    fig, (ax,) = figure()
    cmap, norm = _size_colours(t)
    sc = ax.scatter(t.C, t.loss, c=t.N, cmap=cmap, norm=norm, s=22, edgecolors="k", linewidths=0.3, zorder=3)
    fig.colorbar(sc, ax=ax, label="parameters N")
    if result.approach == "1":
        env = result.extras["envelope"]
        ax.plot(t.C[env], t.loss[env], "r-", lw=1.5, label="lower envelope", zorder=4)
    elif result.approach == "2":
        v = result.extras["valleys"]
        ax.plot([x.compute for x in v], [x.loss_opt for x in v], "r*-", ms=10, label="IsoFLOP valley minima")
    elif result.approach == "3":
        law = chinchilla_from_fit(result)
        cs = np.logspace(math.log10(t.C.min()), math.log10(t.C.max()) + 1, 100)
        opt = [law.optimal(c) for c in cs]
        ax.plot(cs, [o.loss for o in opt], "r-", lw=1.5, label="fitted optimum L(N_opt, D_opt)")
        ax.axhline(law.E, color="grey", ls=":", label=f"E = {law.E:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_y(ax)
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"loss vs compute ({len(t)} runs)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return save_png(fig, path)


def plot_allocation(result: FitResult, path: Path) -> Path:
    """N_opt and D_opt against compute: the points the fit used and the fitted power laws."""
    t: RunTable = result.extras["table"]
    fig, axes = figure(2, width=5.0)
    cs = np.logspace(math.log10(t.C.min()) - 0.5, math.log10(t.C.max()) + 1, 100)
    if result.approach == "3":
        law = chinchilla_from_fit(result)
        lines = {"N": law.G * (cs / 6) ** law.a, "D": (cs / 6) / (law.G * (cs / 6) ** law.a)}
        boots = result.extras.get("boots") or []
        bands = {}
        if len(boots) >= 10:
            n_b = np.array([_g(b) * (cs / 6) ** b["a"] for b in boots])
            bands = {"N": np.percentile(n_b, [2.5, 97.5], axis=0),
                     "D": np.percentile((cs / 6) / n_b, [2.5, 97.5], axis=0)[::-1]}
        points: dict[str, np.ndarray] = {}
        labels = {"N": f"N_opt = G (C/6)^{law.a:.3f}", "D": f"D_opt = (C/6) / N_opt, exponent {law.b:.3f}"}
    else:
        n_law, d_law = result.extras["n_law"], result.extras["d_law"]
        lines = {"N": n_law(cs), "D": d_law(cs)}
        bands = {}
        points = {"N": result.extras["opt_N"], "D": result.extras["opt_D"]}
        labels = {"N": f"N_opt ∝ C^{n_law.slope.value:.3f}", "D": f"D_opt ∝ C^{d_law.slope.value:.3f}"}
    for ax, key, name in zip(axes, ("N", "D"), ("parameters", "tokens")):
        ax.plot(cs, lines[key], "r-", label=labels[key])
        if key in bands:
            ax.fill_between(cs, bands[key][0], bands[key][1], color="r", alpha=0.15,
                            label="95% bootstrap band")
        if key in points:
            src = "envelope runs" if result.approach == "1" else "valley minima"
            ax.plot(result.extras["opt_C"], points[key], "ko", ms=5, label=src)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training compute C (FLOPs)")
        ax.set_ylabel(f"optimal {name} {key}_opt")
        ax.legend(fontsize=8)
    fig.suptitle(f"compute-optimal allocation (approach {result.approach})")
    return save_png(fig, path)


def _g(p: dict[str, float]) -> float:
    return (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))


def plot_isoflops(result: FitResult, path: Path, tol_decades: float = 0.05) -> Path:
    """Loss against N per compute budget: Approach 2's parabolas and valleys, or Approach 3's surface
    along each IsoFLOP line D = C / (k N) with its optimum; k is the runs' FLOPs per parameter-token
    (6 when C = 6ND, more when C counts attention too)."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    t: RunTable = result.extras["table"]
    fig, (ax,) = figure(width=7.0)
    cnorm = LogNorm(vmin=t.C.min(), vmax=max(t.C.max(), t.C.min() * 1.0001))
    cmap = colormaps["plasma"]
    if result.approach == "2":
        for v in result.extras["valleys"]:
            col = cmap(cnorm(v.compute) * 0.85)
            x = np.log(t.N[v.idx])
            xs = np.linspace(x.min() - 0.2, x.max() + 0.2, 100)
            ax.plot(t.N[v.idx], t.loss[v.idx], "o", color=col, ms=4)
            ax.plot(np.exp(xs), np.polyval(v.coef_n, xs), "-", color=col, lw=1, label=f"C = {v.compute:.2g}")
            ax.plot(v.n_opt, v.loss_opt, "*", color=col, ms=12, mec="k")
        title = "IsoFLOP profiles: parabola in log N, valley minima (stars)"
    else:
        law = chinchilla_from_fit(result)
        for g in group_by_compute(t.C, tol_decades):
            c = float(np.exp(np.mean(np.log(t.C[g]))))
            col = cmap(cnorm(c) * 0.85)
            ax.plot(t.N[g], t.loss[g], "o", color=col, ms=4)
            if len(g) < 2:
                continue
            k = flops_per_param_token(t.subset(g))  # 6 when C = 6ND, more when C counts attention
            ns = np.logspace(math.log10(t.N[g].min()) - 0.2, math.log10(t.N[g].max()) + 0.2, 100)
            ax.plot(ns, law.loss(ns, c / (k * ns)), "-", color=col, lw=1, label=f"C = {c:.2g}")
            wide = np.logspace(math.log10(t.N.min()) - 2, math.log10(t.N.max()) + 2, 2000)
            best = int(np.argmin(law.loss(wide, c / (k * wide))))
            ax.plot(wide[best], law.loss(wide[best], c / (k * wide[best])), "*", color=col, ms=12, mec="k")
        title = "fitted L(N, D) along each budget's IsoFLOP line D = C/(kN), optima (stars)"
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    return save_png(fig, path)


def plot_contours(result: FitResult, path: Path) -> Path:
    """Filled contours of the fitted loss over (N, D), the runs coloured by their observed loss on the same
    scale, IsoFLOP lines, and (Approach 3) the compute-optimal frontier."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    t: RunTable = result.extras["table"]
    fig, (ax,) = figure(width=6.5, height=5.0)
    ln = np.linspace(math.log10(t.N.min()) - 0.3, math.log10(t.N.max()) + 0.3, 120)
    ld = np.linspace(math.log10(t.D.min()) - 0.3, math.log10(t.D.max()) + 0.3, 120)
    nn, dd = np.meshgrid(10**ln, 10**ld)
    if result.approach == "3":
        law = chinchilla_from_fit(result)
        zz = law.loss(nn, dd)
        title = "fitted L(N, D) = E + A/N^α + B/D^β"
    else:
        zz = kaplan_nd_loss(result.extras["nd_theta"], nn, dd)
        title = "fitted Kaplan L(N, D) (eq. 1.5)"
    lo, hi = float(np.percentile(t.loss, 1)), float(np.percentile(t.loss, 99))
    levels = np.linspace(min(lo, zz.min()), max(hi, lo * 1.001), 25)
    norm = Normalize(vmin=levels[0], vmax=levels[-1])
    cmap = colormaps["viridis"]
    cf = ax.contourf(nn, dd, np.clip(zz, levels[0], levels[-1]), levels=levels, cmap=cmap, norm=norm)
    ax.scatter(t.N, t.D, c=t.loss, cmap=cmap, norm=norm, s=25, edgecolors="w", linewidths=0.6, zorder=3)
    fig.colorbar(cf, ax=ax, label="loss (nats/token)")
    budgets = np.unique(np.round(np.log10(t.C), 1))
    k = flops_per_param_token(t)  # the runs' own C / (ND): IsoFLOP lines pass through their points
    for b in budgets[:: max(1, len(budgets) // 6)]:
        ns = 10**ln
        ax.plot(ns, 10**b / (k * ns), "w--", lw=0.7)
    if result.approach == "3":
        cs = np.logspace(math.log10(k * nn.min() * dd.min()), math.log10(k * nn.max() * dd.max()), 200)
        opt = [law.optimal(c, k) for c in cs]
        ax.plot([o.n_params for o in opt], [o.n_tokens for o in opt], "r-", lw=1.5,
                label="compute-optimal frontier")
        ax.legend(fontsize=8, loc="upper left")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(nn.min(), nn.max())
    ax.set_ylim(dd.min(), dd.max())
    ax.set_xlabel("parameters N")
    ax.set_ylabel("tokens D")
    ax.set_title(title + " (dashed: IsoFLOP lines)", fontsize=10)
    return save_png(fig, path)


def plot_kaplan(result: FitResult, path: Path) -> Path:
    """Kaplan fits: loss vs N and vs D with envelope runs and power laws; observed vs predicted L(N, D)."""
    t: RunTable = result.extras["table"]
    fig, axes = figure(3, width=4.5)
    for ax, x, env, law, name in ((axes[0], t.N, result.extras["env_n"], result.extras["n_law"], "N"),
                                  (axes[1], t.D, result.extras["env_d"], result.extras["d_law"], "D")):
        ax.plot(x, t.loss, "o", color="0.7", ms=4, label="all runs")
        ax.plot(x[env], t.loss[env], "ko", ms=5, label="lower envelope")
        xs = np.logspace(math.log10(x.min()), math.log10(x.max()), 50)
        alpha, xc = law.scale()
        ax.plot(xs, law(xs), "r-", label=f"({name}_c/{name})^{alpha.value:.3f}, {name}_c={xc.value:.2g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_y(ax)
        ax.set_xlabel("parameters N" if name == "N" else "tokens D")
        ax.set_ylabel("loss (nats/token)")
        ax.legend(fontsize=7)
    pred = kaplan_nd_loss(result.extras["nd_theta"], t.N, t.D)
    ax = axes[2]
    ax.plot(pred, t.loss, "o", ms=4)
    lim = [min(pred.min(), t.loss.min()), max(pred.max(), t.loss.max())]
    ax.plot(lim, lim, "k--", lw=0.8)
    ax.set_xlabel("predicted L(N, D) (eq. 1.5)")
    ax.set_ylabel("observed loss")
    ax.set_title("eq. 1.5 fit", fontsize=10)
    fig.suptitle("Kaplan et al. power laws")
    return save_png(fig, path)


def write_plots(result: FitResult, out: Path, tol_decades: float = 0.05) -> list[Path]:
    """Write every figure that suits ``result`` into ``out``; return the paths written."""
    out = Path(out)
    paths = [plot_frontier(result, out / "frontier.png")]
    if result.approach in ("1", "2", "3"):
        paths.append(plot_allocation(result, out / "allocation.png"))
    if result.approach in ("2", "3"):
        paths.append(plot_isoflops(result, out / "isoflops.png", tol_decades))
    if result.approach in ("3", "kaplan"):
        paths.append(plot_contours(result, out / "contours.png"))
    if result.approach == "kaplan":
        paths.append(plot_kaplan(result, out / "kaplan.png"))
    return paths
