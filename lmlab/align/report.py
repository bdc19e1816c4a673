"""What an alignment run shows: the report.md that ``lmlab sft``, ``reward train``, ``dpo`` and ``rlhf``
write at the end of a run (its key settings, the final figures they print with --json, the training
curves from metrics.jsonl) and the one of ``lmlab align frontier`` (the reward-vs-KL table and plot)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmlab.fileio import write_text
from lmlab.markdown import escape, inline_code, settings_list, table

REPORT = "report.md"
CURVES = "curves.png"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return escape(str(v))


def run_settings(cfg: Any, *names: str) -> dict[str, Any]:
    """The key settings of a training run's config for its report: the options ``names`` (as the
    config holds them), then its length in steps, learning rate and schedule, and precision."""
    settings = {name.replace("_", " "): getattr(cfg, name) for name in names}
    o = cfg.optim
    settings |= {"max steps": cfg.max_steps, "learning rate": f"{o.lr:g} ({o.schedule}, to {o.min_lr:g})",
                 "precision": cfg.precision, "seed": cfg.seed}
    return settings


def plot_curves(metrics_dir: Path, panels: Sequence[tuple[str, Sequence[str]]], path: Path) -> Path | None:
    """Plot training curves from ``metrics_dir``/metrics.jsonl: one panel per ``(title, keys)``, each key
    a line against the step (training metrics every logged step, ``val_*`` at each evaluation). Panels
    whose keys were never logged are left out. Writes a PNG at ``path``; returns it, or None when there
    is nothing to plot."""
    from lmlab.plotting import figure, save_png
    from lmlab.train.log import read_metrics

    rows = read_metrics(metrics_dir)
    series = [(title, {k: [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
                       for k in keys}) for title, keys in panels]
    series = [(t, {k: pts for k, pts in s.items() if pts}) for t, s in series]
    series = [(t, s) for t, s in series if s]
    if not series:
        return None
    # fixed margins: matplotlib's constrained layout would double the cost of a run's last step
    width = 4.2 * len(series)
    fig, axes = figure(len(series), width=4.2, height=3.2, layout=None)
    fig.subplots_adjust(left=0.65 / width, right=1 - 0.15 / width, bottom=0.15, top=0.9, wspace=0.3)
    for ax, (title, lines) in zip(axes, series):
        for key, pts in lines.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 12 else None,
                    markersize=3, label=key)
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_png(fig, path)


def write_run_report(out: Path, title: str, summary: str, settings: dict[str, Any],
                     figures: dict[str, dict[str, Any]], curves: Path | None,
                     interrupted: bool = False) -> Path:
    """Write OUT/report.md of a training run: ``summary`` (one paragraph, already markdown), the key
    ``settings``, ``figures`` as a table (one column per phase, e.g. first step / validation / test, one
    row per metric) and the training curves' plot when there is one. Returns the report's path."""
    lines = [f"# {title}", "", summary, ""]
    if interrupted:
        lines += ["**Interrupted**: these are the figures at the last step reached; `--resume` continues "
                  "the run and rewrites this report.", ""]
    lines += ["## Settings", "", settings_list(settings), ""]
    phases = [p for p, values in figures.items() if values]
    if phases:
        metrics = list(dict.fromkeys(k for p in phases for k in figures[p]))
        rows = [[escape(m), *(_fmt(figures[p].get(m)) for p in phases)] for m in metrics]
        lines += ["## Results", "", table(["metric", *phases], rows), ""]
    if curves is not None:
        lines += ["## Training curves", "", f"![training curves]({curves.relative_to(out).as_posix()})", ""]
    lines += ["The run's files: `config.yaml` (every option), `metrics.jsonl` (every logged step).", ""]
    path = Path(out) / REPORT
    write_text(path, "\n".join(lines))
    return path


def frontier_report(out: Path, rows: Sequence[Any], cfg: Any, plot: str, samples: str) -> Path:
    """Write OUT/report.md of ``lmlab align frontier``: one row per policy (mean reward with its standard
    error, KL to the reference and how it was found, mean response length, samples), the plot and a
    link to the samples. ``rows`` are FrontierRow objects. Returns the report's path."""
    body = [[escape(r.name), escape(r.method), f"{r.score:.4f}", f"{r.score_se:.4f}", f"{r.kl:.4f}",
             r.kl_kind, f"{r.length:.1f}", str(r.samples)] for r in rows]
    lines = [
        "# Reward against KL: the alignment frontier",
        "",
        f"Each policy answers {cfg.n_prompts} held-out prompts from {inline_code(cfg.prompts)} "
        f"({cfg.samples_per_prompt} samples per prompt, temperature 1, at most {cfg.max_new_tokens} tokens); "
        f"the reward model {inline_code(cfg.reward)} scores the responses. KL(policy || reference) is the "
        "mean over the samples of log pi(y|x) - log pi_ref(y|x) (nats per response, 'sampled'); best-of-n "
        "samples the reference and has the analytic KL log n - (n - 1)/n ('analytic').",
        "",
        settings_list({"reference": cfg.ref, "reward model": cfg.reward,
                       "policies": ", ".join(cfg.policies) or "none",
                       "best-of-n": ", ".join(str(n) for n in cfg.best_of) or "none",
                       "template": cfg.template, "seed": cfg.seed}),
        "",
        table(["policy", "method", "mean reward", "± s.e.", "KL (nats)", "KL from", "length (tokens)",
               "samples"], body, left=2),
        "",
        f"![mean reward against KL to the reference]({plot})",
        "",
        f"Example responses of each policy: [{samples}]({samples}).",
        "",
    ]
    path = Path(out) / REPORT
    write_text(path, "\n".join(lines))
    return path
