"""In-context learning: score a model's k-shot answers to a task, by constrained choice (raw and
calibrated) or by exact match of a generation.

Constrained choice: for each question, the log-likelihood of every label's continuation after the
prompt (:func:`lmlab.evaluate.loglikelihood.loglikelihoods`, the whole continuation: a label the
tokenizer splits into several tokens is scored on all of them); the answer is the label with the
highest. Calibrated (Zhao et al. 2021, "Calibrate before use", contextual calibration): the same
demonstrations with content-free inputs (``"N/A"``, ``""``, ``"[MASK]"``) give each label a
probability (renormalised over the labels); their mean ``p_cf`` estimates the prompt's bias, and
a question's label probabilities ``p`` become ``W p`` renormalised, ``W = diag(p_cf)^-1`` (b = 0).

Exact match: the greedy generation after the prompt, up to the answer's end (the line break, or
the chat turn's end), stripped, equals the label.

Demonstrations: for each of ``seeds`` draws, one set of ``k`` demonstrations is drawn from the
task's pool (seeded, :func:`lmlab.prompting.templates.select_demos`) and used for every question
(as Zhao et al. fix a prompt), so the content-free estimate is one per draw; the accuracy is
reported per draw and as mean and standard deviation over draws.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lmlab.errors import LmlabError
from lmlab.prompting.tasks import Task
from lmlab.prompting.templates import Demo, Template, select_demos

CONTENT_FREE = ("N/A", "", "[MASK]")
SCORINGS = ("choice", "generate")


def calibrate(logprobs: torch.Tensor, content_free_logprobs: torch.Tensor) -> torch.Tensor:
    """Return contextually calibrated label probabilities ``(N, L)``.

    ``logprobs (N, L)``: each question's label log-likelihoods; ``content_free_logprobs (C, L)``:
    those of the C content-free inputs under the same prompt. Each row is renormalised over the
    labels (softmax), the content-free rows are averaged into ``p_cf``, and each question's
    ``p / p_cf`` is renormalised to sum to 1.
    """
    p = torch.softmax(logprobs.double(), dim=-1)
    p_cf = torch.softmax(content_free_logprobs.double(), dim=-1).mean(dim=0)
    q = p / p_cf
    return q / q.sum(dim=-1, keepdim=True)


@dataclass
class ChoiceScores:
    """Label log-likelihoods ``(N, L)`` of N prompts, and the token counts of each label's
    continuation after the first prompt (to tell whether labels were single tokens)."""

    logprobs: torch.Tensor
    label_tokens: list[list[int]]


def context_size(model: torch.nn.Module) -> int:
    """Return the most tokens ``model`` reads at once (a large number when it has no limit)."""
    from lmlab.generate.steps import context_limit

    return context_limit(model) or 1 << 30


def choice_logprobs(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str],
                    continuations: Sequence[str], batch_size: int = 16) -> ChoiceScores:
    """Return the log-likelihood of each of ``continuations`` after each of ``prompts``.

    Pairs are split as lm-eval splits them (:func:`~lmlab.evaluate.loglikelihood.encode_pair`) and
    a prompt longer than the model's context keeps its tail (as lm-eval truncates).
    """
    from lmlab.evaluate.loglikelihood import encode_pair, loglikelihoods

    pairs = [encode_pair(tokenizer, p, c) for p in prompts for c in continuations]
    results = loglikelihoods(model, pairs, block_size=context_size(model), batch_size=batch_size)
    values = torch.tensor([r.logprob for r in results], dtype=torch.float64)
    return ChoiceScores(values.view(len(prompts), len(continuations)),
                        [pairs[j][1] for j in range(len(continuations))])


def label_notice(tokenizer: Any, labels: Sequence[str], label_tokens: Sequence[Sequence[int]]) -> str | None:
    """Return a one-line notice when a label is several tokens under ``tokenizer`` (so the full
    continuations are scored, not first tokens, and whether first tokens are shared), else None."""
    if all(len(t) == 1 for t in label_tokens):
        return None
    firsts = [tokenizer.decode([t[0]]) for t in label_tokens]
    shared = len(set(firsts)) < len(firsts)
    split = ", ".join(f"{lab!r} -> {len(t)}" for lab, t in zip(labels, label_tokens))
    why = ("some share their first token, so a first-token score could not tell them apart" if shared
           else "their first tokens differ but are not the whole labels")
    return (f"notice: the tokenizer splits labels into several tokens ({split}); {why}: scoring the "
            "full continuations (summed log-probabilities)")


@dataclass
class Draw:
    """One seeded set of demonstrations and the questions asked with it."""

    seed: int
    demos: list[Demo]
    questions: list[Demo]


def draws(task: Task, shots: int, seeds: int, base_seed: int, questions: list[Demo]) -> list[Draw]:
    """Return ``seeds`` draws of ``shots`` demonstrations (seeds ``base_seed .. base_seed + seeds - 1``);
    with a leave-one-out task a question that is one of the draw's demonstrations is left out."""
    out = []
    for s in range(base_seed, base_seed + seeds):
        demos = select_demos(task.pool, shots, seed=s * 1_000_003 + shots)
        shown = set(demos)
        asked = [q for q in questions if q not in shown] if task.leave_one_out else questions
        if not asked:
            raise LmlabError(f"every question drawn is one of the {shots} demonstrations of draw {s}; ask "
                             "more questions (--samples) or fewer shots")
        out.append(Draw(s, demos, asked))
    return out


def check_shots(task: Task, shots: Sequence[int]) -> None:
    """Raise LmlabError when a shot count is negative or exceeds the task's demonstration pool
    (saying how many labelled examples there are)."""
    bad = [k for k in shots if k < 0]
    if bad:
        raise LmlabError(f"--shots {bad[0]} is negative; give counts such as 0,1,4,16")
    most = max(shots)
    # leave-one-out: the questions are the pool, so at least one must stay out of the demonstrations
    limit = len(task.pool) - 1 if task.leave_one_out else len(task.pool)
    if most > limit:
        raise LmlabError(f"{most} shots asked but task {task.name!r} has only {len(task.pool)} labelled "
                         f"examples to draw demonstrations from; ask for at most {max(limit, 0)} shots or "
                         "give more examples")


@dataclass
class ShotResult:
    """Accuracies at one shot count: one per draw (``raw``; ``calibrated`` for choice scoring)."""

    shots: int
    raw: list[float]
    calibrated: list[float] = field(default_factory=list)
    questions: int = 0
    truncated: int = 0

    def row(self) -> dict[str, Any]:
        """Return the result as a JSON-ready dict with means and standard deviations over draws."""
        def stats(xs: list[float]) -> dict[str, float | None]:
            if not xs:
                return {"mean": None, "std": None}
            return {"mean": statistics.fmean(xs), "std": statistics.pstdev(xs) if len(xs) > 1 else 0.0}

        return {"shots": self.shots, "questions": self.questions, "truncated_prompts": self.truncated,
                "raw": self.raw, "raw_mean": stats(self.raw)["mean"], "raw_std": stats(self.raw)["std"],
                "calibrated": self.calibrated, "calibrated_mean": stats(self.calibrated)["mean"],
                "calibrated_std": stats(self.calibrated)["std"]}


def _count_truncated(tokenizer: Any, prompts: Sequence[str], limit: int) -> int:
    return sum(len(tokenizer.encode(p)) >= limit for p in prompts)


def score_choice(model: torch.nn.Module, tokenizer: Any, task: Task, template: Template, draw: Draw,
                 batch_size: int = 16) -> tuple[float, float, list[list[int]], int]:
    """Return (raw accuracy, calibrated accuracy, label token ids, truncated prompts) of one draw."""
    assert task.labels is not None
    conts = [template.continuation(lab) for lab in task.labels]
    prompts = [template.render(draw.demos, q.input) for q in draw.questions]
    scores = choice_logprobs(model, tokenizer, prompts, conts, batch_size)
    cf = choice_logprobs(model, tokenizer, [template.render(draw.demos, x) for x in CONTENT_FREE], conts,
                         batch_size)
    gold = torch.tensor([task.labels.index(q.label) for q in draw.questions])
    raw = float((scores.logprobs.argmax(-1) == gold).double().mean())
    cal = float((calibrate(scores.logprobs, cf.logprobs).argmax(-1) == gold).double().mean())
    return raw, cal, scores.label_tokens, _count_truncated(tokenizer, prompts, context_size(model))


def score_generate(model: torch.nn.Module, tokenizer: Any, template: Template, draw: Draw,
                   max_new_tokens: int = 16, batch_size: int = 16) -> tuple[float, int, list[str]]:
    """Return (exact-match accuracy, truncated prompts, the answers) of one draw by greedy generation."""
    from lmlab.generate import decode

    end = template.answer_end()
    stop = [tokenizer.encode(end)]
    eos = [tokenizer.eot_id] if tokenizer.eot_id is not None else []
    prompts = [template.render(draw.demos, q.input) for q in draw.questions]
    answers: list[str] = []
    for i in range(0, len(prompts), batch_size):
        ids = [tokenizer.encode(p) for p in prompts[i:i + batch_size]]
        outs = decode(model, ids, max_new_tokens, temperature=0.0, eos_id=eos or None, stop=stop,
                      truncate=True)
        answers += [tokenizer.decode(o).split(end)[0].strip() for o in outs]
    hits = [a == q.label.strip() for a, q in zip(answers, draw.questions)]
    limit = context_size(model) - max_new_tokens
    return sum(hits) / len(hits), _count_truncated(tokenizer, prompts, limit), answers


@dataclass
class IclReport:
    """Everything one evaluation found: per shot count, and the notices printed along the way."""

    task: str
    scoring: str
    format: str
    labels: list[str] | None
    results: list[ShotResult]
    notices: list[str]
    chance: float | None
    majority: float | None
    examples: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-ready dict."""
        return {"task": self.task, "scoring": self.scoring, "format": self.format, "labels": self.labels,
                "chance": self.chance, "majority": self.majority, "notices": self.notices,
                "rows": [r.row() for r in self.results], "examples": self.examples}


def evaluate_icl(model: torch.nn.Module, tokenizer: Any, task: Task, shots: Sequence[int], *,
                 scoring: str = "choice", fmt: str = "plain", seeds: int = 1, seed: int = 0,
                 samples: int | None = 200, max_new_tokens: int = 16, batch_size: int = 16,
                 on_notice: Any = None) -> IclReport:
    """Score ``model`` on ``task`` at each shot count; return an :class:`IclReport`.

    Raises LmlabError for an unknown scoring, choice scoring of a task without a label set, more
    shots than labelled examples, or the chat format with a tokenizer that lacks the chat tokens.
    ``on_notice(line)`` is called with each notice as it arises (the CLI prints them).
    """
    if scoring not in SCORINGS:
        raise LmlabError(f"unknown --scoring {scoring!r}; use choice or generate")
    if scoring == "choice" and not task.labels:
        raise LmlabError(f"task {task.name!r} has open answers (no label set); score it with --scoring "
                         "generate")
    if seeds < 1:
        raise LmlabError(f"--seeds must be at least 1, got {seeds}")
    if not shots:
        raise LmlabError("--shots is empty; give shot counts such as 0,1,4,16")
    from lmlab.generate.steps import family

    if family(model) == "encdec":  # raises for encoders, which predict masked tokens
        raise LmlabError("in-context prompts are continued by a causal language model; an encoder-decoder "
                         "reads the prompt as a source instead: load a decoder (GPT-2/LLaMA, RNN) run")
    if fmt == "chat":
        from lmlab.data.chat import FIX, has_chat_tokens

        if not has_chat_tokens(tokenizer):
            raise LmlabError("--format chat needs the tokenizer's <|im_start|>/<|im_end|> tokens, which it "
                             f"lacks; use --format plain or instruction, or {FIX}")
    template = task.template(fmt)
    questions = task.questions(samples, seed)
    check_shots(task, shots)
    notices: list[str] = []

    def notice(line: str) -> None:
        if line not in notices:
            notices.append(line)
            if on_notice is not None:
                on_notice(line)

    results, examples = [], []
    for k in shots:
        res = ShotResult(k, [])
        for d in draws(task, k, seeds, seed, questions):
            res.questions = len(d.questions)
            if scoring == "choice":
                raw, cal, label_tokens, cut = score_choice(model, tokenizer, task, template, d, batch_size)
                res.raw.append(raw)
                res.calibrated.append(cal)
                msg = label_notice(tokenizer, task.labels or [], label_tokens)
                if msg:
                    notice(msg)
            else:
                acc, cut, answers = score_generate(model, tokenizer, template, d, max_new_tokens, batch_size)
                res.raw.append(acc)
                if d.seed == seed:
                    examples += [{"shots": k, "input": q.input, "label": q.label, "answer": a}
                                 for q, a in zip(d.questions[:3], answers[:3])]
            res.truncated = max(res.truncated, cut)
        if res.truncated:
            notice(f"notice: {res.truncated} of {res.questions} prompts at {k} shots are longer than the "
                   f"model's context ({context_size(model)} tokens); their beginnings were cut")
        results.append(res)
    chance = 1 / len(task.labels) if task.labels else None
    majority = None
    if task.labels:
        majority = Counter(q.label for q in questions).most_common(1)[0][1] / len(questions)
    return IclReport(task.name, scoring, fmt, task.labels, results, notices, chance, majority, examples)


def format_table(report: IclReport) -> str:
    """Return the report's accuracies as a fixed-width text table (mean +- std over draws)."""
    def cell(mean: float | None, std: float | None) -> str:
        return "-" if mean is None else f"{mean:.3f} +- {std:.3f}"

    if report.scoring == "choice":
        lines = [f"{'shots':>5} {'questions':>9} {'raw accuracy':>16} {'calibrated':>16}"]
        for r in (res.row() for res in report.results):
            lines.append(f"{r['shots']:>5} {r['questions']:>9} {cell(r['raw_mean'], r['raw_std']):>16} "
                         f"{cell(r['calibrated_mean'], r['calibrated_std']):>16}")
    else:
        lines = [f"{'shots':>5} {'questions':>9} {'exact match':>16}"]
        for r in (res.row() for res in report.results):
            lines.append(f"{r['shots']:>5} {r['questions']:>9} {cell(r['raw_mean'], r['raw_std']):>16}")
    base = []
    if report.chance is not None:
        base.append(f"chance {report.chance:.3f}")
    if report.majority is not None:
        base.append(f"majority label {report.majority:.3f}")
    if base:
        lines.append("baselines: " + ", ".join(base))
    return "\n".join(lines)


__all__ = ["CONTENT_FREE", "SCORINGS", "ChoiceScores", "Draw", "IclReport", "ShotResult", "calibrate",
           "check_shots", "choice_logprobs", "context_size", "draws", "evaluate_icl", "format_table",
           "label_notice", "score_choice", "score_generate"]
