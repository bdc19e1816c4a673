"""The prompting commands: ``lmlab icl`` (k-shot scoring of a task), ``lmlab icl emergence`` (in-context
learning by model size and shots) and ``lmlab icl induction`` (the induction-head signature)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmlab.config import arg, save_config
from lmlab.errors import LmlabError
from lmlab.prompting.emergence import IclEmergenceConfig


@dataclass
class IclConfig:
    ckpt: str | None = arg(None, "a decoder: an lmlab run folder or a Hugging Face folder")
    task: str | None = arg(None, "sentiment[-movies|-amazon|-nyt|-tweets], first-letter, last-letter, "
                                 "repeat-word, kv-lookup, linear-regression, or a .jsonl of "
                                 "{\"input\", \"label\"} records")
    shots: list[int] = arg([0, 1, 4, 16], "numbers of demonstrations, comma separated")
    scoring: Literal["choice", "generate"] = arg(
        "choice", "choice: the label of highest log-likelihood (raw and calibrated); generate: exact "
                  "match of the greedy answer")
    format: Literal["plain", "instruction", "chat"] = arg(
        "plain", "prompt format: plain (Input:/Output: lines), instruction (the task's instruction first), "
                 "chat (the chat template)")
    seeds: int = arg(1, "draws of demonstrations per shot count (accuracy: mean and std over draws)")
    seed: int = arg(0, "seed of the first draw, of the questions and of generated tasks")
    samples: int | None = arg(200, "questions asked (a seeded sample of the task's test set; none: all)")
    corpus: str = arg("shakespeare", "corpus the word tasks take their words from")
    max_new_tokens: int = arg(16, "longest generated answer (--scoring generate)")
    batch_size: int = arg(16, "sequences per forward pass")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    out: Path | None = arg(None, "folder for results.json and config.yaml")
    json: bool = arg(False, "print the results as one JSON object")


def icl(cfg: IclConfig) -> int:
    """In-context learning: a model's accuracy on a task with 0, 1, 4, 16 ... demonstrations.

    Prompts hold --shots demonstrations drawn (seeded) from the task's labelled examples, then the
    question. --scoring choice picks the label whose continuation has the highest log-likelihood,
    raw and calibrated (Zhao et al. 2021: content-free inputs "N/A", "", "[MASK]" estimate the
    prompt's bias, which is divided out); --scoring generate compares the greedy answer with the
    label. Labels the tokenizer splits into several tokens are scored whole (a notice says so).
    Prints a table (--json: one JSON object); --out writes results.json and config.yaml.
    See also 'lmlab icl emergence' and 'lmlab icl induction'.

    Examples:
      lmlab icl --ckpt runs/lm-movies --task sentiment --shots 0,1,4,16 --seeds 3
      lmlab icl --ckpt runs/llama --task linear-regression --scoring generate --shots 0,2,8
      lmlab icl --ckpt runs/chat --task my-task.jsonl --format chat --out runs/icl-mine
    """
    from lmlab.device import resolve_device
    from lmlab.fileio import write_json
    from lmlab.loader import load
    from lmlab.prompting.icl import evaluate_icl, format_table
    from lmlab.prompting.tasks import get_task

    if not cfg.ckpt:
        raise LmlabError("no model given; pass --ckpt RUN (a run folder or a Hugging Face folder)")
    if not cfg.task:
        raise LmlabError("no task given; pass --task sentiment (or another built-in, or a .jsonl file)")
    task = get_task(cfg.task, cfg.corpus, cfg.seed)
    model, tokenizer = load(cfg.ckpt, device=resolve_device(cfg.device))
    if tokenizer is None:
        raise LmlabError(f"{cfg.ckpt} has no tokenizer.json; in-context prompts are text, so the run needs "
                         "one")

    def notice(line: str) -> None:
        if not cfg.json:
            print(line, flush=True)

    report = evaluate_icl(model, tokenizer, task, cfg.shots, scoring=cfg.scoring, fmt=cfg.format,
                          seeds=cfg.seeds, seed=cfg.seed, samples=cfg.samples,
                          max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, on_notice=notice)
    record = {"ckpt": str(cfg.ckpt), **report.to_dict()}
    if cfg.out is not None:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        write_json(out / "results.json", record)
    if cfg.json:
        print(json.dumps(record))
        return 0
    print(f"task {task.name} ({cfg.format} format, {cfg.scoring} scoring, {cfg.seeds} draw"
          f"{'s' if cfg.seeds > 1 else ''} of demonstrations)")
    print(format_table(report))
    if cfg.out is not None:
        print(f"wrote {Path(cfg.out) / 'results.json'}")
    return 0


def icl_emergence(cfg: IclEmergenceConfig) -> int:
    """Train models of several sizes on in-context key-digit lookup; k-shot accuracy by size and shots.

    Each training document draws a fresh random mapping of letters to digits and writes draws
    from it ("q7 b1 q7 ..."), so a digit is predictable only from the context. Every model
    (llama-tiny at each --sizes width, --n-layer blocks) trains for the same --steps; then held-out
    questions "q7 b1 q" are asked with 0, 1, 2 ... pairs of context (constrained choice among
    the digits), and the induction-head signature is measured (loss drop on a repeated random
    sequence, prefix-matching attention per head).

    Writes OUT/results.json, results.csv, icl-emergence.png, config.yaml and models/dWIDTH (run
    folders: 'lmlab icl induction --ckpt' reads them). Prints a table (--json: one JSON object).

    Examples:
      lmlab icl emergence --out runs/icl-emergence
      lmlab icl emergence --out runs/icl-small --sizes 32,64 --steps 300 --json
    """
    from lmlab.prompting.emergence import format_emergence, run_emergence

    def on_model(i: int, n: int, d: int) -> None:
        if not cfg.json:
            print(f"model {i}/{n}: d_model {d}, {cfg.n_layer} layers, {d // cfg.head_dim} heads", flush=True)

    record = run_emergence(cfg, on_model)
    if cfg.json:
        print(json.dumps(record))
        return 0
    print(f"task: {record['task']['n_keys']} keys per mapping, e.g. {record['task']['example']!r}; "
          f"{record['task']['questions']} held-out questions")
    print(format_emergence(record))
    print(f"wrote {Path(record['out']) / 'results.json'}, results.csv and icl-emergence.png in "
          f"{record['wall_s']:.0f}s")
    return 0


@dataclass
class InductionConfig:
    ckpt: str | None = arg(None, "a Transformer decoder run (lmlab run folder or Hugging Face folder)")
    length: int = arg(32, "tokens of the random sequence, repeated once (2 x length must fit the context)")
    samples: int = arg(64, "random sequences")
    seed: int = arg(0, "seed of the random sequences")
    batch_size: int = arg(32, "sequences per forward pass")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    out: Path | None = arg(None, "folder for results.json and config.yaml")
    json: bool = arg(False, "print the results as one JSON object")


def icl_induction(cfg: InductionConfig) -> int:
    """The induction-head signature of a decoder (Olsson et al. 2022) on repeated random sequences.

    Random tokens r (no special tokens), then r again: the loss on the second copy against the
    first (a model that copies from its context predicts the second copy), and each head's
    prefix-matching score: its attention, at a token of the second copy, on the token that
    followed that token's first occurrence. Prints the losses and a layer x head table
    (--json: one JSON object); --out writes results.json and config.yaml.

    Example:
      lmlab icl induction --ckpt runs/icl-emergence/models/d128 --length 24
    """
    from lmlab.device import resolve_device
    from lmlab.fileio import write_json
    from lmlab.loader import load
    from lmlab.prompting.induction import (
        format_induction,
        measure_induction,
        plain_token_ids,
        repeated_sequences,
    )

    if not cfg.ckpt:
        raise LmlabError("no model given; pass --ckpt RUN")
    if cfg.samples < 1:
        raise LmlabError(f"--samples must be at least 1, got {cfg.samples}")
    model, tokenizer = load(cfg.ckpt, device=resolve_device(cfg.device))
    vocab = model.config.vocab_size
    ids = repeated_sequences(plain_token_ids(tokenizer, vocab), cfg.length, cfg.samples, cfg.seed)
    result = measure_induction(model, ids, cfg.batch_size)
    record = {"ckpt": str(cfg.ckpt), **result.to_dict()}
    if cfg.out is not None:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        write_json(out / "results.json", record)
    if cfg.json:
        print(json.dumps(record))
        return 0
    print(format_induction(result))
    return 0
