"""Preference pairs sampled from a policy and labelled by a reward model: the data of on-policy
DPO (the DPO paper's sentiment experiment, sec. 6.1: pairs of SFT samples labelled by the
reward) and of reward-model ensembles.

For each prompt two responses are sampled at temperature 1; the reward model scores
``prompt + response``; the higher-scored one is ``chosen``. Pairs whose scores differ by less
than ``min_gap`` are dropped (a tie teaches nothing), and so are pairs with an empty response
(the policy ended at once: there is no text to prefer). Writes ``prompt``/``chosen``/``rejected``
JSONL with the score gap as ``margin``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lmlab.config import arg, save_config
from lmlab.errors import LmlabError


@dataclass
class PolicyPairsConfig:
    """Options of ``lmlab align pairs``."""

    policy: Path | None = arg(None, "the policy to sample from (e.g. the SFT model)")
    reward: str | None = arg(None, "the reward model run that labels each pair")
    prompts: str = arg("reviews:sentiment-movies", "prompts: a .jsonl/.txt file or reviews:CORPUS")
    split: str = arg("train", "the prompts' split (for reviews:CORPUS)")
    n_prompts: int | None = arg(None, "use at most this many prompts (default: all)")
    template: str = arg("plain", "prompt layout: plain (continue text) or chat")
    max_new_tokens: int = arg(24, "tokens per response at most")
    min_gap: float = arg(0.0, "drop pairs whose reward scores differ by less than this")
    batch_size: int = arg(64, "prompts per sampling batch")
    seed: int = arg(0, "seed of the sampling")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    out: Path | None = arg(None, "the JSONL file to write (config beside it as OUT.config.yaml)")
    overwrite: bool = arg(False, "replace an existing --out file")
    json: bool = arg(False, "print the figures as one JSON object")


@dataclass
class PolicyPairsResult:
    """What ``lmlab align pairs`` wrote."""

    out: str
    prompts: int
    pairs: int
    dropped_ties: int  # ties and pairs with an empty response
    mean_gap: float
    chosen_score: float
    rejected_score: float


def policy_pairs(cfg: PolicyPairsConfig) -> PolicyPairsResult:
    """Sample two responses per prompt, label them with the reward model, write the pairs; return
    the counts and mean scores."""
    from lmlab.align.best_of_n import sample_responses, score_all
    from lmlab.align.prompts import read_prompts
    from lmlab.align.reward import load_scorer
    from lmlab.align.sft import load_decoder
    from lmlab.device import resolve_device
    from lmlab.fileio import write_text

    if cfg.policy is None or cfg.reward is None or cfg.out is None:
        raise LmlabError("align pairs needs --policy RUN, --reward RM_RUN and --out PAIRS.jsonl")
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise LmlabError(f"{out} exists; pass --overwrite or another --out")
    device = resolve_device(cfg.device)
    model, tok = load_decoder(cfg.policy, device)
    scorer = load_scorer(cfg.reward, device=device)
    prompts = read_prompts(cfg.prompts, cfg.split, cfg.n_prompts)
    samples = sample_responses(model.eval(), tok, prompts, 2, cfg.template, 1.0, cfg.max_new_tokens, cfg.seed,
                               cfg.batch_size, show_progress=False)
    score_all(scorer, prompts, samples, cfg.template)
    texts = [r.text for rs in samples for r in rs]
    scores = [r.score for rs in samples for r in rs]
    lines, gaps, chosen, rejected, ties = [], [], [], [], 0
    for i, prompt in enumerate(prompts):
        (sa, ta), (sb, tb) = (scores[2 * i], texts[2 * i]), (scores[2 * i + 1], texts[2 * i + 1])
        if abs(sa - sb) < cfg.min_gap or ta == tb or sa == sb or not ta.strip() or not tb.strip():
            ties += 1  # a tie, or an empty response (a pair needs two texts to compare)
            continue
        (sc, tc), (sr, tr) = ((sa, ta), (sb, tb)) if sa > sb else ((sb, tb), (sa, ta))
        pair = {"prompt": prompt, "chosen": tc, "rejected": tr, "margin": round(sc - sr, 4)}
        lines.append(json.dumps(pair))
        gaps.append(sc - sr)
        chosen.append(sc)
        rejected.append(sr)
    if not lines:
        raise LmlabError(f"every pair was a tie (gap < --min-gap {cfg.min_gap}); lower --min-gap or "
                         "give more prompts")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, "\n".join(lines) + "\n")
    save_config(cfg, out.with_name(out.name + ".config.yaml"))
    n = len(lines)
    return PolicyPairsResult(str(out), len(prompts), n, ties, round(sum(gaps) / n, 4),
                             round(sum(chosen) / n, 4), round(sum(rejected) / n, 4))
