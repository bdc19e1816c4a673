"""The hallucination experiment: a world of facts, models pretrained on it, questions graded by what
the world knows, detectors scored by AUROC, and two mitigations.

1. :func:`write_world` writes the world (``world.json``), its training text with and without the
   "unknown" lines (``corpus/``, ``corpus-unknown/``) and both as prepared data (``data/``,
   ``data-unknown/``; one BPE tokenizer, trained on the larger text, so both models read the same ids).
2. :func:`train_model` pretrains a decoder on one of them through ``lmlab.train.pretrain`` (the one
   Trainer).
3. :func:`evaluate_run` asks each asked-about person's questions closed-book and open-book
   (retrieval-augmented), grades them, and scores the detectors on the closed-book answers.
4. :func:`run_experiment` does all of it for a base model and an "unknown"-trained model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.config import arg
from lmlab.errors import LmlabError
from lmlab.hallucination.corpus import VAL_FRACTION, retrieve, source_index, write_corpus
from lmlab.hallucination.detectors import (
    DETECTORS,
    selfcheck_ngram,
    sequence_scores,
    supported,
    token_disagreement,
    unsupported_score,
)
from lmlab.hallucination.questions import (
    Grade,
    Question,
    ask_questions,
    extract_answer,
    grade,
    qa_prompt,
    summarize,
)
from lmlab.hallucination.world import BUCKETS, WorldSpec, load_world, make_world, save_world
from lmlab.prompting.bm25 import BM25

DATA = {False: "data", True: "data-unknown"}
CORPUS = {False: "corpus", True: "corpus-unknown"}


def write_world(spec: WorldSpec, out: str | Path, k: int = 3, vocab_size: int = 1024,
                overwrite: bool = False) -> dict[str, Any]:
    """Write the world, its training texts and their prepared data into ``out``; return a summary
    (bucket sizes, lines and tokens per text)."""
    from lmlab.data.prepare import prepare

    if k < 1:
        raise LmlabError(f"--k must be at least 1 retrieved sentence (got {k})")
    out = Path(out)
    if (out / "world.json").exists() and not overwrite:
        raise LmlabError(f"{out} already holds a world; pass --overwrite to write a new one or use "
                         "another --out")
    world = make_world(spec)
    save_world(world, out)
    index = source_index(world)
    summary: dict[str, Any] = {"out": str(out), "people": {b: len(world.bucket(b)) for b in BUCKETS},
                               "asked": len(world.asked()), "unknown_names": len(world.unknown_names),
                               "source_sentences": len(index), "k": k}
    for unknown in (True, False):  # the larger text first: its tokenizer serves both
        write_corpus(world, out / CORPUS[unknown], index, k, unknown)
        tokenizer = None if unknown else out / DATA[True] / "tokenizer.json"
        meta, _ = prepare(str(out / CORPUS[unknown]), out / DATA[unknown], kind="bpe", vocab_size=vocab_size,
                          val_fraction=VAL_FRACTION, tokenizer_file=tokenizer, overwrite=True)
        summary[DATA[unknown]] = {"train_tokens": meta["splits"]["train"]["tokens"],
                                  "vocab_size": meta["vocab_size"]}
    return summary


@dataclass
class ModelSpec:
    """The decoder trained on the world (llama-tiny's family at this shape) and how long."""

    d_model: int = arg(128, "model width")
    n_layer: int = arg(4, "Transformer blocks")
    n_head: int = arg(4, "attention heads")
    block_size: int = arg(128, "tokens per training window (the model's context)")
    batch_size: int = arg(32, "windows per step")
    steps: int = arg(800, "optimizer steps of each model")
    lr: float = arg(2e-3, "peak learning rate (cosine decay to a twentieth, warmup a tenth of the steps, "
                          "at most 100)")
    train_seed: int = arg(1337, "seed of the init and the batch order")


def train_model(world_dir: str | Path, out: str | Path, model: ModelSpec, unknown: bool = False,
                overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Pretrain a decoder on the world's text (with the "unknown" lines when ``unknown``) into ``out``;
    return the run's summary (steps, tokens, seconds, losses)."""
    from lmlab.train.options import OptimOptions
    from lmlab.train.pretrain import PretrainConfig, pretrain

    data = Path(world_dir) / DATA[unknown]
    if not (data / "meta.json").is_file():
        raise LmlabError(f"{world_dir} has no prepared data {DATA[unknown]}/; write the world with "
                         f"'lmlab hallucination world --out {world_dir}'")
    cfg = PretrainConfig(model="llama-tiny", data=data, out=Path(out), d_model=model.d_model,
                         n_layer=model.n_layer, n_head=model.n_head, n_kv_heads=model.n_head,
                         block_size=model.block_size, batch_size=model.batch_size, max_steps=model.steps,
                         optim=OptimOptions(lr=model.lr, min_lr=model.lr / 20,
                                            warmup_steps=min(100, model.steps // 10)),
                         precision="fp32", seed=model.train_seed, eval_iters=5, overwrite=overwrite,
                         progress=progress, log_interval=50)
    return pretrain(cfg).summary()


def answer_questions(model: Any, tokenizer: Any, prompts: Sequence[str], temperature: float = 0.0,
                     seed: int | None = None, max_new_tokens: int = 12, batch_size: int = 128) -> list[str]:
    """Return the model's answer to each prompt (its first generated line), greedy or sampled."""
    from lmlab.generate.text import generate_text

    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        done = generate_text(model, tokenizer, chunk, max_new_tokens, stop=["\n"], temperature=temperature,
                             seed=None if seed is None else seed + start, truncate=True)
        out += [extract_answer(c.text) for c in done]
    return out


def prompt_for(question: Question, index: BM25 | None = None, k: int = 3) -> str:
    """Return the prompt asking ``question``: closed-book, or open-book with ``k`` retrieved sentences.

    The prompt starts a new line, as every question in the training text does."""
    context = retrieve(index, question.text, k) if index is not None else None
    return "\n" + qa_prompt(question.text, context)


def detector_scores(model: Any, tokenizer: Any, index: BM25, questions: Sequence[Question],
                    prompts: Sequence[str], answers: Sequence[str], samples: int, k: int,
                    seed: int) -> list[dict[str, float]]:
    """Return each detector's score (see :mod:`lmlab.hallucination.detectors`) for each answer."""
    sampled = answer_questions(model, tokenizer, [p for p in prompts for _ in range(samples)],
                               temperature=1.0, seed=seed)
    seq = sequence_scores(model, tokenizer, prompts, answers)
    rows = []
    for i, (q, a) in enumerate(zip(questions, answers)):
        mine = sampled[i * samples:(i + 1) * samples]
        avg, mx = selfcheck_ngram(a, mine)
        rows.append({"neg_logprob": seq[i][0], "mean_entropy": seq[i][1], "selfcheck_ngram_avg": avg,
                     "selfcheck_ngram_max": mx, "token_disagreement": token_disagreement(a, mine),
                     "unsupported": unsupported_score(index, q.text, q.name, a, k)})
    return rows


def detector_aurocs(grades: Sequence[Grade], questions: Sequence[Question],
                    scores: Sequence[dict[str, float]]) -> dict[str, dict[str, float | None]]:
    """Return each detector's AUROC for telling hallucinated from correct answers, over all answered
    questions and over the seen (often, rarely) ones alone (None where one class is missing)."""
    from lmlab.evaluate.auroc import auroc_or_none

    out: dict[str, dict[str, float | None]] = {}
    for subset, keep in (("all", lambda q: True), ("seen", lambda q: q.bucket != "never")):
        idx = [i for i, (g, q) in enumerate(zip(grades, questions)) if keep(q)]
        labels = [int(grades[i].hallucinated) for i in idx]
        out[subset] = {d: auroc_or_none(labels, [scores[i][d] for i in idx]) for d in DETECTORS}
        out[subset]["n"] = len(idx)
        out[subset]["hallucinated"] = sum(labels)
    return out


def retrieval_recall(index: BM25, questions: Sequence[Question], k: int) -> dict[str, float]:
    """Return, per seen bucket, the share of questions whose ``k`` retrieved sentences support the true
    answer (name and fact in one sentence): how often an open-book prompt holds what it needs."""
    out = {}
    for bucket in ("often", "rarely"):
        qs = [q for q in questions if q.bucket == bucket]
        if qs:
            out[bucket] = sum(supported(retrieve(index, q.text, k), q.name, q.truth) for q in qs) / len(qs)
    return out


def evaluate_run(run: str | Path, world_dir: str | Path, per_bucket: int = 200, k: int = 3, samples: int = 8,
                 seed: int = 0, detectors: bool = True) -> dict[str, Any]:
    """Ask a run the world's questions closed-book and open-book; grade; score the detectors on the
    closed-book answers that assert something. Returns the figures and a few examples."""
    if samples < 1:
        raise LmlabError(f"--samples must be at least 1 (got {samples}); SelfCheck compares sampled answers")
    if k < 1:
        raise LmlabError(f"--k must be at least 1 retrieved sentence (got {k})")
    world = load_world(world_dir)
    index = source_index(world)
    from lmlab.loader import load  # torch: only once the inputs are known to be good

    model, tokenizer = load(run)
    model.eval()
    questions = ask_questions(world, per_bucket, seed)
    result: dict[str, Any] = {"run": str(run), "world": str(world_dir), "questions": len(questions), "k": k}
    graded: dict[str, list[Grade]] = {}
    for mode, ix in (("closed_book", None), ("open_book", index)):
        prompts = [prompt_for(q, ix, k) for q in questions]
        answers = answer_questions(model, tokenizer, prompts)
        graded[mode] = [grade(a, q) for a, q in zip(answers, questions)]
        result[mode] = summarize(questions, graded[mode])
    result["retrieval_recall"] = retrieval_recall(index, questions, k)
    result["examples"] = [{"bucket": q.bucket, "question": q.text, "truth": q.truth,
                           "closed_book": graded["closed_book"][i].answer,
                           "open_book": graded["open_book"][i].answer}
                          for i, q in _examples(questions)]
    if detectors:
        keep = [i for i, g in enumerate(graded["closed_book"]) if not g.abstained]
        qs = [questions[i] for i in keep]
        gs = [graded["closed_book"][i] for i in keep]
        prompts = [prompt_for(q) for q in qs]
        answers = [g.answer for g in gs]
        scores = detector_scores(model, tokenizer, index, qs, prompts, answers, samples, k, seed)
        result["detectors"] = detector_aurocs(gs, qs, scores)
        result["samples"] = samples
    return result


def run_experiment(out: str | Path, spec: WorldSpec, model: ModelSpec, per_bucket: int = 200, k: int = 3,
                   samples: int = 8, question_seed: int = 0, vocab_size: int = 1024, overwrite: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Write the world into ``OUT/world``, pretrain ``OUT/base`` on its text and ``OUT/unknown`` on the
    text with the "unknown" lines (same steps, same seed), evaluate both (with the detectors)
    and write ``OUT/results.json``; return the results."""
    import time

    from lmlab.fileio import write_json

    out = Path(out)
    if (out / "results.json").exists() and not overwrite:
        raise LmlabError(f"{out} already holds results; pass --overwrite to run again or use another --out")
    t0 = time.perf_counter()
    result: dict[str, Any] = {"world": write_world(spec, out / "world", k, vocab_size, overwrite=True)}
    for name, unknown in (("base", False), ("unknown", True)):
        result[f"train_{name}"] = train_model(out / "world", out / name, model, unknown, overwrite=True,
                                              progress=progress)
    for name in ("base", "unknown"):
        result[name] = evaluate_run(out / name, out / "world", per_bucket, k, samples, question_seed)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    write_json(out / "results.json", result)
    return result


def _cell(row: dict[str, float] | None) -> str:
    if row is None:
        return f"{'-':>17}"
    return f"{row['hallucination_rate']:>8.3f} {row['accuracy']:>8.3f}"


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Return the hallucination table of evaluations keyed by model name (``base``, ``unknown``): per
    prompt kind, the hallucination rate and accuracy by entity frequency; then the detectors' AUROC
    of the models that have them."""
    head = f"{'model, prompts':<30}" + "".join(f"{b + ' (halluc acc)':>18}" for b in (*BUCKETS, "all"))
    lines = [head]
    for name, res in results.items():
        for mode, label in (("closed_book", "closed book"), ("open_book", f"open book (BM25 k={res['k']})")):
            lines.append(f"{name + ', ' + label:<30}" + "".join(f" {_cell(res[mode].get(b))}"
                                                                   for b in (*BUCKETS, "all")))
    for res in results.values():  # the same world and questions for every model: print once
        recall = res.get("retrieval_recall") or {}
        if recall:
            shares = ", ".join(f"{b} {v:.3f}" for b, v in recall.items())
            lines.append(f"retrieval recall@{res['k']} (a retrieved sentence states the asked fact): "
                         f"{shares}")
            break
    for name, res in results.items():
        det = res.get("detectors")
        if not det:
            continue
        lines.append("")
        lines.append(f"detector AUROC ({name}, closed-book answers that assert something: hallucinated "
                     "vs correct; all buckets, and seen people only)")
        lines.append(f"{'detector':<22}{'all':>8}{'seen':>8}")
        for d in DETECTORS:
            cells = "".join(f"{'-' if det[s][d] is None else format(det[s][d], '.3f'):>8}"
                            for s in ("all", "seen"))
            lines.append(f"{d:<22}{cells}")
        counts = "".join(f"{det[s]['n']:>4},{det[s]['hallucinated']:>3}" for s in ("all", "seen"))
        lines.append(f"{'(answers, hallucinated)':<22}{counts}")
    return "\n".join(lines)


def _examples(questions: Sequence[Question], per_bucket: int = 2) -> list[tuple[int, Question]]:
    seen: Counter[str] = Counter()
    out = []
    for i, q in enumerate(questions):
        if seen[q.bucket] < per_bucket:
            seen[q.bucket] += 1
            out.append((i, q))
    return out


__all__ = ["ModelSpec", "answer_questions", "detector_aurocs", "detector_scores", "evaluate_run",
           "format_table", "prompt_for", "retrieval_recall", "run_experiment", "train_model", "write_world"]
