"""What a lineage run shows: the results table, the bits-per-byte-against-FLOPs plot and report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmlab.fileio import write_text
from lmlab.markdown import code_block, table
from lmlab.plotting import figure, save_png

COLUMNS = ("model", "params", "train s", "tokens seen", "train FLOPs", "val bpb", "val ppl/token")


def _count(n: float) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.0f}"


def table_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    """One row of formatted cells per result, in the order of :data:`COLUMNS`."""
    return [[r["name"], _count(r["params"]), f"{r['train_seconds']:.1f}", _count(r["tokens_seen"]),
             "-" if r.get("train_flops") is None else f"{r['train_flops']:.3g}",
             f"{r['val_bpb']:.4f}", f"{r['val_ppl']:.2f}"] for r in results]


def text_table(results: list[dict[str, Any]]) -> str:
    """The results as an aligned plain-text table."""
    rows = [list(COLUMNS), *table_rows(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(results: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    return table(COLUMNS, table_rows(results))


def plot_curves(results: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Plot validation bits per byte against training FLOPs for every model; write a PNG at ``path``.

    Each neural model is a line through its validations at equal fractions of its budget
    (on a fixed subset of the validation split), ending in a larger marker at its final
    score on the whole split; the n-gram, which has no gradient training, is a dashed
    horizontal line at its score, so the reader sees where each neural model crosses it.
    """
    fig, (ax,) = figure(width=7.5, height=4.8)
    for r in results:
        if not r.get("curve"):
            ax.axhline(r["val_bpb"], color="0.3", linestyle="--", linewidth=1.2, label=r["label"])
            continue
        xs = [p["flops"] for p in r["curve"]]
        ys = [p["val_bpb"] for p in r["curve"]]
        line = ax.plot(xs, ys, marker="o", markersize=3, label=r["label"])[0]
        ax.plot([r["train_flops"]], [r["val_bpb"]], marker="D", markersize=7, color=line.get_color(),
                markerfacecolor="none", linestyle="none")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (forward + backward)")
    ax.set_ylabel("validation bits per byte")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_png(fig, path)


def _scoring(settings: dict[str, Any]) -> str:
    stride, block = settings.get("eval_stride") or settings["block_size"], settings["block_size"]
    if stride >= block:
        return (f"Neural models are scored on non-overlapping windows of {block} tokens (the context "
                "restarts at each window); the n-gram scores the stream.")
    return (f"Neural models are scored on windows of {block} tokens sliding by {stride}, each scoring its "
            f"last {stride} tokens, so every token has at least {block - stride} tokens of context; "
            "the n-gram scores the stream.")


def _budget_text(settings: dict[str, Any]) -> str:
    kind, text = settings["budget_kind"], settings["budget_text"]
    if kind == "seconds":
        return (f"Every model got {text} (the schedule runs on elapsed time, so the figures depend on the "
                "machine).")
    return (f"Every neural model got {text} ({'by its own FLOPs per token; ' if kind == 'flops' else ''}"
            "a fixed number of steps, so the schedule and data are the same on every machine); the "
            "n-gram tried every order and smoothing.")


def _plot_text(settings: dict[str, Any]) -> str:
    return (f"The curves are {settings['evals']} validations at equal fractions of each budget, each on "
            f"{settings['eval_iters'] * settings['batch_size']} windows spread over the validation split; "
            "the diamonds are the final scores on the whole split (the table); the dashed line is the "
            "n-gram.")


def write_report(path: Path, results: list[dict[str, Any]], settings: dict[str, Any], plot_name: str) -> Path:
    """Write report.md: settings, the table, the plot, the n-gram search and a sample per model."""
    ngram = next((r for r in results if r["name"] == "ngram"), None)
    best = min(results, key=lambda r: r["val_bpb"])
    lines = [
        "# The lineage: one corpus, one tokenizer, one budget",
        "",
        f"Corpus `{settings['corpus']}`, {settings['tokenizer']} tokenizer with {settings['vocab_size']} "
        f"tokens; {settings['train_tokens']:,} training and {settings['val_tokens']:,} validation tokens "
        f"({settings['val_bytes']:,} bytes). " + _budget_text(settings) + " Neural models use windows of "
        f"{settings['block_size']} tokens, batches of {settings['batch_size']}, AdamW with warmup and a "
        f"cosine schedule, on `{settings['device']}` in {settings['precision']}. Validation bits per byte = "
        "total nats / ln 2 / bytes of the whole validation split; perplexity is per token. "
        + _scoring(settings),
        "",
        markdown_table(results),
        "",
        f"Best: **{best['name']}** at {best['val_bpb']:.4f} bits per byte.",
        "",
        f"![validation bits per byte against training FLOPs]({plot_name})",
        "",
        _plot_text(settings),
        "",
    ]
    if ngram is not None:
        tried = ", ".join(f"{c['order']}/{c['smoothing']} {c['dev_bpb']:.3f}" for c in ngram["search"])
        lines += [
            "## n-gram search",
            "",
            f"Chosen: order {ngram['order']}, {ngram['smoothing']} smoothing, by bits per byte on the last "
            f"10% of the training split (fitted on the rest), then refitted on all of it in "
            f"{ngram['fit_seconds']:.1f} s and saved as ngram/model.arpa (which `lmlab serve` serves) in "
            f"{ngram['save_seconds']:.1f} s. Its params column counts stored n-grams. Tried "
            f"(order/smoothing dev bpb): {tried}.",
            "",
        ]
    lines += ["## Samples", "", f"Prompt: {settings['prompt']!r}; temperature {settings['temperature']}, "
              f"top-k {settings['top_k']}, seed {settings['seed']}.", ""]
    for r in results:
        lines += [f"**{r['label']}**", "", code_block(settings["prompt"] + r["sample"]), ""]
    write_text(path, "\n".join(lines))
    return path
