"""The reward-versus-KL frontier: how much reward each aligned policy buys for how far it moved
from the reference (the DPO paper's figure 2; Gao et al. 2022 for best-of-n).

For each policy, responses are sampled (temperature 1, the policy's own distribution) for
held-out prompts and scored by the reward model; the KL is the Monte-Carlo estimate
``E_{y ~ pi}[log pi(y|x) - log pi_ref(y|x)]`` summed over the response's tokens. Best-of-n
from the reference is scored the same way, with its analytic KL ``log n - (n - 1) / n``
(Stiennon et al. 2020; an upper bound that is tight for continuous rewards). Writes
``frontier.json`` (one row per policy or n), ``frontier.png``, ``samples.md`` and ``report.md`` (the
table, the plot and a link to the samples).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmlab.config import arg, save_config
from lmlab.errors import LmlabError


@dataclass
class FrontierConfig:
    """Options of ``lmlab align frontier``."""

    ref: Path | None = arg(None, "the reference policy (the SFT model every other policy started from)")
    reward: str | None = arg(None, "the reward model run that scores responses")
    policies: list[str] = arg([], "aligned policies as NAME=RUN, comma-separated (e.g. ppo-b0.05=runs/ppo)")
    best_of: list[int] = arg([1, 4, 16], "best-of-n from the reference: the values of n, comma-separated")
    prompts: str = arg("reviews:sentiment-movies", "prompts: a .jsonl/.txt file or reviews:CORPUS")
    split: str = arg("validation", "the prompts' split (for reviews:CORPUS)")
    n_prompts: int = arg(128, "held-out prompts to sample for")
    samples_per_prompt: int = arg(2, "responses sampled per prompt and policy")
    template: str = arg("plain", "prompt layout: plain (continue text) or chat")
    max_new_tokens: int = arg(24, "tokens per response at most")
    batch_size: int = arg(64, "prompts per sampling batch")
    seed: int = arg(0, "seed of the sampling")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    out: Path | None = arg(None, "folder for frontier.json, frontier.png, samples.md, report.md and "
                                 "config.yaml")
    json: bool = arg(False, "print the rows as one JSON object")


@dataclass
class FrontierRow:
    """One point of the frontier: mean reward (and its standard error) and KL to the reference."""

    name: str
    method: str
    score: float
    score_se: float
    kl: float
    kl_kind: str  # "sampled" (Monte-Carlo) or "analytic" (best-of-n)
    length: float
    samples: int
    examples: list[dict[str, str]] = field(default_factory=list)


def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
    return mean, math.sqrt(var / n)


def frontier(cfg: FrontierConfig) -> list[FrontierRow]:
    """Measure every policy of ``cfg`` and best-of-n from the reference; write the files; return the rows."""
    import torch

    from lmlab.align.best_of_n import (
        Response,
        best_index,
        best_of_n_kl,
        expected_best,
        sample_responses,
        score_all,
    )
    from lmlab.align.preferences import prompt_text
    from lmlab.align.prompts import encode_prompt, read_prompts
    from lmlab.align.report import frontier_report
    from lmlab.align.reward import load_scorer
    from lmlab.align.rollout import pad_id_for
    from lmlab.align.sequences import join, sequence_logprobs
    from lmlab.align.sft import load_decoder
    from lmlab.device import resolve_device
    from lmlab.fileio import write_json

    if cfg.ref is None or cfg.reward is None or cfg.out is None:
        raise LmlabError("align frontier needs --ref SFT_RUN, --reward RM_RUN and --out DIR")
    named = []
    for item in cfg.policies:
        name, eq, run = item.partition("=")
        if not eq or not name or not run:
            raise LmlabError(f"--policies entry {item!r} is not NAME=RUN (e.g. ppo=runs/ppo)")
        named.append((name, run))
    device = resolve_device(cfg.device)
    ref, tok = load_decoder(cfg.ref, device, "the reference")
    scorer = load_scorer(cfg.reward, device=device)
    prompts = read_prompts(cfg.prompts, cfg.split, cfg.n_prompts)
    encoded = [encode_prompt(tok, p, cfg.template) for p in prompts]
    stops = encoded[0].stop_ids
    texts = [prompt_text(p) for p in prompts]
    pad = pad_id_for(tok, stops)
    k = cfg.samples_per_prompt

    def draw(model: Any, copies: int, seed: int) -> list[list[Response]]:
        """``copies`` scored responses per prompt (best-of-n's sampling and scoring)."""
        samples = sample_responses(model, tok, prompts, copies, cfg.template, 1.0, cfg.max_new_tokens, seed,
                                   cfg.batch_size, show_progress=False)
        score_all(scorer, prompts, samples, cfg.template)
        return samples

    def sampled(r: Response) -> list[int]:
        return r.ids + stops[:1] if r.ended else r.ids  # as drawn: an ended response keeps its stop token

    def logprobs(model: Any, rows: list[int], responses: list[list[int]]) -> list[float]:
        out: list[float] = []
        for a in range(0, len(rows), cfg.batch_size):
            j = join([encoded[i].ids for i in rows[a:a + cfg.batch_size]], responses[a:a + cfg.batch_size],
                     pad, device)
            with torch.no_grad():
                out += sequence_logprobs(model, j).tolist()
        return out

    def examples(picked: list[tuple[int, Response]]) -> list[dict[str, str]]:
        return [{"prompt": texts[i], "response": r.text, "score": f"{r.score:.3f}"} for i, r in picked[:6]]

    result: list[FrontierRow] = []
    ref.eval()
    ref_samples = draw(ref, max(max(cfg.best_of, default=1), k), cfg.seed)
    for n in cfg.best_of:
        # the unbiased mean of the best of n over all n-subsets of each prompt's samples
        best = [expected_best([r.score for r in rs], n) for rs in ref_samples]
        picks = [(i, rs[best_index(rs, n)]) for i, rs in enumerate(ref_samples)]  # the best of the first n
        mean, se = _mean_se(best)
        result.append(FrontierRow(f"best-of-{n}", "best-of-n", mean, se, best_of_n_kl(n), "analytic",
                                  sum(len(sampled(r)) for _, r in picks) / len(picks), len(best),
                                  examples(picks)))
    for name, run in named:
        policy, ptok = load_decoder(run, device, f"policy {name}")
        if ptok.hf.to_str() != tok.hf.to_str():
            raise LmlabError(f"{run}'s tokenizer differs from the reference's; a KL to the reference needs "
                             "the same tokenizer")
        policy.eval()
        flat = [(i, r) for i, rs in enumerate(draw(policy, k, cfg.seed + 1)) for r in rs]
        rows, ids = [i for i, _ in flat], [sampled(r) for _, r in flat]
        kl = [a - b for a, b in zip(logprobs(policy, rows, ids), logprobs(ref, rows, ids))]
        mean, se = _mean_se([r.score for _, r in flat])
        result.append(FrontierRow(name, _method(name), mean, se, sum(kl) / len(kl), "sampled",
                                  sum(len(x) for x in ids) / len(ids), len(flat), examples(flat[::k])))
        del policy
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    write_json(out / "frontier.json", {"rows": [asdict(r) for r in result]})
    plot_frontier(result, out / "frontier.png")
    _write_samples(result, out / "samples.md")
    frontier_report(out, result, cfg, "frontier.png", "samples.md")
    return result


def _method(name: str) -> str:
    """The method a policy's name starts with (``ppo-b0.05`` -> ``ppo``, ``rs2`` -> ``rs``)."""
    m = re.match(r"[A-Za-z]+", name)
    return m.group(0) if m else name


def plot_frontier(rows: list[FrontierRow], path: Path) -> Path:
    """Draw reward against KL, one marker style per method (best-of-n joined by a line); return the path."""
    from lmlab.plotting import figure, save_png

    fig, (ax,) = figure(width=6.5, height=4.5)
    methods: dict[str, list[FrontierRow]] = {}
    for r in rows:
        methods.setdefault(r.method, []).append(r)
    markers = "os^Dvx*P"
    for i, (method, pts) in enumerate(methods.items()):
        pts = sorted(pts, key=lambda r: r.kl)
        style = "-" if method == "best-of-n" else ""
        ax.errorbar([r.kl for r in pts], [r.score for r in pts], yerr=[r.score_se for r in pts],
                    fmt=style + markers[i % len(markers)], capsize=2, label=method)
        for r in pts:
            ax.annotate(r.name, (r.kl, r.score), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("symlog", linthresh=1.0)  # linear up to 1 nat, logarithmic beyond
    ax.set_xlabel("KL(policy || reference), nats per response (linear to 1, log beyond)")
    ax.set_ylabel("mean reward (reward model)")
    ax.set_title("reward vs KL on held-out prompts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


def _write_samples(rows: list[FrontierRow], path: Path) -> None:
    from lmlab.fileio import write_text
    from lmlab.markdown import escape

    lines = ["# Samples per policy (held-out prompts)", ""]
    for r in rows:
        lines += [f"## {escape(r.name)} (reward {r.score:.3f}, KL {r.kl:.2f} {r.kl_kind})", ""]
        # generated text is escaped, so a response's * or # reads as written
        lines += [f"- *{escape(e['prompt'])}* → {escape(e['response'])} ({e['score']})" for e in r.examples]
        lines.append("")
    write_text(path, "\n".join(lines))
