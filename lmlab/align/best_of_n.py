"""Best-of-n: sample n responses from a policy, keep the one a reward model scores highest.

At inference (:func:`best_of_n`) this trades compute for reward with no training; its KL from the
policy is known in closed form, ``log n - (n - 1) / n`` (Stiennon et al. 2020, app. G.3; Hilton
& Gao), so it gives points of the reward-KL frontier for free. Rejection-sampling fine-tuning
(:func:`rejection_sampling`, Llama 2 sec. 3.2.3) samples k responses per prompt, keeps the best
and fine-tunes the policy on them with :func:`lmlab.align.sft.sft`.

The mean best-of-n score is estimated from one pool of N = max(n) samples per prompt with the
unbiased estimator of the expected maximum of n draws: sorted ascending, sample ``i`` (1-based) is
the best of a random n-subset with probability ``C(i - 1, n - 1) / C(N, n)`` (as in Gao et al.
2022's over-optimisation study), which has lower variance than using only the first n samples.

Sampling uses the temperature only (top-k/top-p would change the distribution the KL formula is
about); the prompt layouts are :mod:`lmlab.align.prompts`' (``plain`` or ``chat``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmlab.config import DictConfig, Precision, arg, save_config
from lmlab.errors import LmlabError
from lmlab.train.options import LoopOptions, OptimOptions


@dataclass
class SampleOptions(DictConfig):
    """Where prompts come from and how responses are sampled (best-of-n and rejection sampling)."""

    prompts: str | None = arg(None, "prompts: a .jsonl ('prompt' or 'messages' per line) or .txt file, or "
                                    "reviews:CORPUS (the sentiment task: review prefixes)")
    split: str = arg("train", "the split of reviews:CORPUS to draw prompts from")
    limit: int | None = arg(None, "use at most this many prompts")
    template: Literal["plain", "chat"] = arg(
        "plain", "prompt layout: plain (continue the text; ends at end-of-text) or chat (a user turn; ends "
        "at <|im_end|>)")
    temperature: float = arg(1.0, "sampling temperature (> 0; no top-k/top-p, so the KL formula holds)")
    max_new_tokens: int = arg(48, "tokens per response at most")
    sample_batch: int = arg(64, "rows decoded at once")


@dataclass
class Response:
    """A sampled response: its ids (the stop token removed), text, whether it ended with the stop
    token, and its reward score once scored."""

    ids: list[int]
    text: str
    ended: bool
    score: float = float("nan")


def sample_responses(model: Any, tokenizer: Any, prompts: Sequence[str | list[dict]], k: int,
                     template: str, temperature: float, max_new_tokens: int, seed: int,
                     batch: int = 64, show_progress: bool = True) -> list[list[Response]]:
    """Return ``k`` sampled responses for each prompt, drawn with :func:`lmlab.align.rollout.sample`
    (the KV-cache decoder at ``temperature`` alone) ``batch`` rows at a time, the rows from offset
    ``a`` seeded with ``seed + a`` (as :func:`~lmlab.align.rollout.sample_in_batches`), with a
    progress bar. Raises LmlabError for a temperature <= 0 or a prompt that leaves less than
    ``max_new_tokens`` of the context."""
    from lmlab.align.prompts import encode_prompt
    from lmlab.align.rollout import check_lengths, response_text, sample
    from lmlab.console import progress

    if k < 1 or batch < 1:
        raise LmlabError(f"the number of samples ({k}) and --sample-batch ({batch}) must be at least 1")
    encoded = [encode_prompt(tokenizer, p, template) for p in prompts]
    check_lengths([e.ids for e in encoded], max_new_tokens, model.config.block_size)  # named per prompt
    stops = sorted({s for e in encoded for s in e.stop_ids})
    rows = [i for i in range(len(prompts)) for _ in range(k)]
    out: list[list[Response]] = [[] for _ in prompts]
    bar = progress(total=len(rows), desc="sampling", unit="response", disable=None if show_progress else True)
    for a in range(0, len(rows), batch):
        chunk = rows[a:a + batch]
        drawn = sample(model, [encoded[i].ids for i in chunk], stops, max_new_tokens, temperature, seed + a)
        for i, ids, ended in zip(chunk, drawn.responses, drawn.ended):
            body = ids[:-1] if ended else ids
            out[i].append(Response(body, response_text(tokenizer, encoded[i].ids, body, stops), ended))
        bar.update(len(chunk))
    bar.close()
    return out


def scoring_prompt(prompt: str | list[dict], template: str) -> str:
    """Return the text a scorer reads before a response: a plain prompt as is; a chat prompt (a
    message list, or a text under the chat template, which was a user turn) rendered with the chat
    template up to the assistant's generation prompt (:func:`lmlab.align.preferences.prompt_text`)."""
    from lmlab.align.preferences import prompt_text

    if isinstance(prompt, str) and template == "chat":
        prompt = [{"role": "user", "content": prompt}]
    return prompt_text(prompt)


def score_all(scorer: Any, prompts: Sequence[str | list[dict]], samples: list[list[Response]],
              template: str) -> None:
    """Set the ``score`` of every response in ``samples`` (one list per prompt) with ``scorer``'s
    ``score_pairs(prompt texts, response texts)``."""
    texts = [scoring_prompt(p, template) for p in prompts]
    flat = [(texts[i], r) for i, rs in enumerate(samples) for r in rs]
    scores = scorer.score_pairs([p for p, _ in flat], [r.text for _, r in flat])
    values = [float(s) for s in scores]
    if len(values) != len(flat):
        raise LmlabError(f"the reward model returned {len(values)} scores for {len(flat)} responses")
    bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
    if bad is not None:
        raise LmlabError(f"the reward model scored response {bad} ({flat[bad][1].text[:40]!r}) "
                         f"{values[bad]}; check the reward model (lmlab reward score) before selecting by it")
    for (_, r), s in zip(flat, values):
        r.score = s


def expected_best(scores: Sequence[float], n: int) -> float:
    """Return the unbiased estimate, from ``N >= n`` i.i.d. scores, of the expected maximum of ``n``
    draws: ``sum_i C(i - 1, n - 1) / C(N, n) * s_(i)`` over the scores sorted ascending."""
    N = len(scores)
    if not 1 <= n <= N:
        raise LmlabError(f"best-of-{n} needs at least {n} samples (got {N})")
    ranked = sorted(scores)
    total = math.comb(N, n)
    return sum(math.comb(i - 1, n - 1) / total * s for i, s in enumerate(ranked, 1) if i >= n)


def best_of_n_kl(n: int) -> float:
    """Return the KL divergence (nats) of best-of-n sampling from the policy: ``log n - (n - 1) / n``
    (Stiennon et al. 2020; an upper bound, tight for continuous rewards)."""
    if n < 1:
        raise LmlabError(f"best-of-n needs n >= 1 (got {n})")
    return math.log(n) - (n - 1) / n


def best_index(responses: Sequence[Response], n: int | None = None) -> int:
    """Return the index of the highest-scored of the first ``n`` responses (all when None; the
    first of equal scores)."""
    pool = responses[:n] if n is not None else responses
    return max(range(len(pool)), key=lambda i: (pool[i].score, -i))


# ---------------------------------------------------------------- commands


@dataclass
class BestOfNConfig:
    """Options of ``lmlab best-of-n``."""

    policy: Path | None = arg(None, "the policy to sample from: a run folder (e.g. made by lmlab sft)")
    reward: str | None = arg(None, "the reward model: a run folder made by 'lmlab reward train'")
    out: Path | None = arg(None, "output folder: config.yaml, metrics.jsonl (one line per n), samples.jsonl")
    n: list[int] = arg([1, 4, 16], "the n of best-of-n to report (comma-separated)")
    sampling: SampleOptions = arg(SampleOptions(), "prompts and sampling")
    seed: int = arg(0, "seed of the samples")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    json: bool = arg(False, "print the figures as one JSON object")


@dataclass
class BestOfNResult:
    """Per n: the mean best-of-n score and its KL from the policy."""

    out: str
    prompts: int
    samples_per_prompt: int
    results: list[dict[str, float]] = field(default_factory=list)


def _load_scorer(spec: str, device: Any) -> Any:
    from lmlab.align.reward import load_scorer

    return load_scorer(spec, device=str(device))


def run_best_of_n(cfg: BestOfNConfig, model: Any, tokenizer: Any, scorer: Any) -> BestOfNResult:
    """Sample max(n) responses per prompt from ``model``, score them with ``scorer`` and write the
    best-of-n figures and samples to ``cfg.out`` (see the module docstring); return the figures."""
    from lmlab.align.prompts import read_prompts
    from lmlab.fileio import write_text

    ns = sorted(set(cfg.n))
    if not ns or ns[0] < 1:
        raise LmlabError(f"--n {','.join(map(str, cfg.n))}: give positive sample counts, e.g. --n 1,4,16")
    s = cfg.sampling
    prompts = read_prompts(s.prompts, s.split, s.limit)
    samples = sample_responses(model, tokenizer, prompts, ns[-1], s.template, s.temperature,
                               s.max_new_tokens, cfg.seed, s.sample_batch)
    score_all(scorer, prompts, samples, s.template)
    results = []
    for n in ns:
        best = [responses[best_index(responses, n)] for responses in samples]
        score = sum(expected_best([r.score for r in rs], n) for rs in samples) / len(samples)
        results.append({"n": n, "score": score, "kl": best_of_n_kl(n),
                        "score_first_n": sum(r.score for r in best) / len(best),
                        "ended": sum(r.ended for r in best) / len(best),
                        "response_tokens": sum(len(r.ids) for r in best) / len(best)})
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in results))
    lines = []
    for p, rs in zip(prompts, samples):
        record = {"prompt": p, "responses": [r.text for r in rs], "scores": [r.score for r in rs],
                  "ended": [r.ended for r in rs], "best": {n: best_index(rs, n) for n in ns}}
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    write_text(out / "samples.jsonl", "".join(lines))
    return BestOfNResult(str(out), len(prompts), ns[-1], results)


def best_of_n(cfg: BestOfNConfig) -> BestOfNResult:
    """Run ``lmlab best-of-n``: load the policy and the reward model, then :func:`run_best_of_n`."""
    from lmlab.align.sft import load_decoder
    from lmlab.device import resolve_device

    if cfg.policy is None or cfg.reward is None or cfg.sampling.prompts is None or cfg.out is None:
        raise LmlabError("best-of-n needs --policy RUN, --reward RM, --prompts SPEC and --out DIR")
    device = resolve_device(cfg.device)
    model, tokenizer = load_decoder(cfg.policy, device)
    scorer = _load_scorer(cfg.reward, device)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    save_config(cfg, Path(cfg.out) / "config.yaml")
    return run_best_of_n(cfg, model, tokenizer, scorer)


@dataclass
class RejectionConfig(LoopOptions):
    """Options of ``lmlab rejection-sampling``: sampling, then the SFT options of ``lmlab sft``."""

    policy: Path | None = arg(None, "the policy to sample from and fine-tune: a run folder")
    reward: str | None = arg(None, "the reward model: a run folder made by 'lmlab reward train'")
    out: Path | None = arg(None, "run folder: best.jsonl (the kept samples), the fine-tuned model, "
                                 "config.yaml, metrics.jsonl, state/")
    k: int = arg(8, "responses sampled per prompt; the best one is kept")
    sampling: SampleOptions = arg(SampleOptions(), "prompts and sampling")
    overwrite: bool = arg(False, "start a new run in an --out that already holds one")
    resume: bool = arg(False, "continue the fine-tuning in --out (the kept samples are reused)")
    epochs: float | None = arg(None, "passes over the kept samples (1 when no --max-steps is given)")
    batch_size: int = arg(8, "examples per micro-batch")
    max_len: int = arg(256, "tokens per example at most")
    pack: bool = arg(False, "pack examples into rows of up to --max-len tokens")
    optim: OptimOptions = arg(OptimOptions(lr=1e-4, min_lr=1e-5, warmup_fraction=0.05, warmup_steps=0,
                                           weight_decay=0.0, beta2=0.999), "AdamW and its schedule")
    precision: Precision = arg("auto", "auto = bf16 autocast where the hardware has it, else fp32")
    seed: int = arg(1337, "seed of the samples, the data order and dropout")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    progress: bool = arg(True, "show progress bars (--no-progress hides them)")
    json: bool = arg(False, "print the final figures as one JSON object")


@dataclass
class RejectionResult:
    """How rejection-sampling fine-tuning went: the scores of the samples and the SFT result."""

    out: str
    prompts: int
    k: int
    mean_score: float
    best_score: float
    sft: dict[str, Any]


BEST_FILE = "best.jsonl"


def best_records(prompts: Sequence[str | list[dict]], samples: list[list[Response]]) -> list[dict[str, Any]]:
    """Return the SFT records of the best response per prompt: ``prompt``/``completion`` for a text
    prompt, ``messages`` (the prompt's and the assistant's answer) for a chat prompt; with the
    ``score`` and whether it ``ended``."""
    out = []
    for p, rs in zip(prompts, samples):
        r = rs[best_index(rs)]
        record: dict[str, Any] = ({"messages": [*p, {"role": "assistant", "content": r.text}]}
                                  if isinstance(p, list) else {"prompt": p, "completion": r.text})
        out.append({**record, "score": r.score, "ended": r.ended})
    return out


def run_rejection_sampling(cfg: RejectionConfig, model: Any, tokenizer: Any, scorer: Any) -> RejectionResult:
    """Sample ``cfg.k`` responses per prompt, keep the best by ``scorer`` in ``OUT/best.jsonl`` (reused
    on ``--resume``), then fine-tune ``cfg.policy`` on them with :func:`lmlab.align.sft.sft` under the
    sampling template; return the result."""
    from lmlab.align.prompts import read_prompts
    from lmlab.align.sft import SFTConfig, sft
    from lmlab.fileio import write_text
    from lmlab.train import checkpoint as ckpt

    out = Path(cfg.out)
    if not cfg.resume and ckpt.latest_step(out) is not None and not cfg.overwrite:
        raise LmlabError(f"{out} already holds a run; pass --resume, --overwrite or another --out")
    s = cfg.sampling
    best_file = out / BEST_FILE
    if cfg.resume and best_file.is_file():
        records = [json.loads(line) for line in best_file.read_text(encoding="utf-8").splitlines()]
        all_scores = [r["score"] for r in records]
    else:
        prompts = read_prompts(s.prompts, s.split, s.limit)
        samples = sample_responses(model, tokenizer, prompts, cfg.k, s.template, s.temperature,
                                   s.max_new_tokens, cfg.seed, s.sample_batch, cfg.progress)
        score_all(scorer, prompts, samples, s.template)
        records = best_records(prompts, samples)
        all_scores = [r.score for rs in samples for r in rs]
        out.mkdir(parents=True, exist_ok=True)
        write_text(best_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(SFTConfig) if hasattr(cfg, f.name)
              and f.name not in ("out",)}
    sft_cfg = SFTConfig(**{**shared, "ckpt": Path(cfg.policy), "data": best_file, "out": out,
                           "template": s.template})
    result = sft(sft_cfg, saved_config=cfg)
    return RejectionResult(str(out), len(records), cfg.k, sum(all_scores) / len(all_scores),
                           sum(r["score"] for r in records) / len(records), dataclasses.asdict(result))


def rejection_sampling(cfg: RejectionConfig) -> RejectionResult:
    """Run ``lmlab rejection-sampling``: load the policy and the reward model, then
    :func:`run_rejection_sampling`."""
    from lmlab.align.sft import load_decoder
    from lmlab.device import resolve_device

    if cfg.policy is None or cfg.reward is None or cfg.sampling.prompts is None or cfg.out is None:
        raise LmlabError("rejection-sampling needs --policy RUN, --reward RM, --prompts SPEC and --out RUN2")
    device = resolve_device(cfg.device)
    model, tokenizer = load_decoder(cfg.policy, device)
    scorer = _load_scorer(cfg.reward, device)
    return run_rejection_sampling(cfg, model, tokenizer, scorer)
