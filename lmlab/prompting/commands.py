"""CLI face of prompting: ``lmlab tools data|eval|ask``, ``lmlab cot compare|eval|plot`` (a
scratchpad against direct answers at equal training compute; greedy against self-consistency) and
``lmlab icl`` (k-shot scoring of a task), ``lmlab icl emergence`` (in-context learning by model size
and shots) and ``lmlab icl induction`` (the induction-head signature)."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmlab.config import arg, save_config
from lmlab.errors import LmlabError
from lmlab.prompting.cot import CompareConfig, EvalConfig, PlotConfig
from lmlab.prompting.emergence import IclEmergenceConfig
from lmlab.prompting.tool_data import ToolDataConfig, write_tool_data
from lmlab.prompting.tool_eval import ToolEvalConfig, evaluate_tools


def _save_results(cfg: Any, record: dict) -> None:
    """Write ``record`` as OUT/results.json and the resolved config as OUT/config.yaml when --out is set."""
    if cfg.out is not None:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        from lmlab.fileio import write_json

        write_json(out / "results.json", record)


def tools_data(cfg: ToolDataConfig) -> int:
    """Write tool-use training and test data made by code (Toolformer-style): large-number
    arithmetic answered through a calculator call, and Shakespeare play/speaker questions answered
    through a BM25 search over every speech (a call is kept only where its result holds the answer).
    Half the training questions show the call, half answer directly, so one model learns both and
    the tools in the prompt decide. Fine-tune on train.jsonl with 'lmlab sft', then measure with
    'lmlab tools eval'. E.g.:

      lmlab tools data --out runs/data/tools
      lmlab sft --ckpt runs/base --data runs/data/tools/train.jsonl --max-len 512 --out runs/tools-sft
      lmlab tools eval --ckpt runs/tools-sft --data runs/data/tools
    """
    if cfg.out is None:
        raise LmlabError("give --out, the folder to write the data set into")
    meta = write_tool_data(Path(cfg.out), list(cfg.tasks), cfg.per_task, cfg.seed, cfg.shakespeare,
                           cfg.min_digits, cfg.max_digits, cfg.tool_share, cfg.overwrite)
    save_config(cfg, Path(cfg.out) / "config.yaml")
    print(f"wrote {meta['train']['tools']} tool and {meta['train']['direct']} direct training conversations, "
          f"{meta['validation']} validation and {meta['test']} test questions, {meta['documents']} search "
          f"documents to {cfg.out} ({meta['unhelpful_calls_dropped']} calls whose result lacked the answer "
          "were shown as direct answers)")
    return 0


def tools_eval(cfg: ToolEvalConfig) -> int:
    """Accuracy on held-out questions with the tools (the model's calls run in a loop: calculator,
    BM25 search) and without them, per task, with calls per question and failed calls. Writes
    OUT/results.json, samples.md and config.yaml when --out is given."""
    r = evaluate_tools(cfg)
    if cfg.json:
        print(json.dumps({"tasks": [dataclasses.asdict(t) for t in r.tasks], "elapsed_s": r.elapsed_s}))
        return 0
    print(f"{'task':<11} {'n':>5} {'with tools':>11} {'alone':>7} {'gain':>7} {'calls/q':>8} {'failed':>7}")
    for t in r.tasks:
        print(f"{t.task:<11} {t.questions:>5} {t.accuracy_tools:>11.3f} {t.accuracy_alone:>7.3f} "
              f"{t.gain:>+7.3f} {t.calls_per_question:>8.2f} {t.failed_call_share:>7.1%}")
    return 0


@dataclass
class AskConfig:
    """Options of ``lmlab tools ask``."""

    question: str | None = arg(None, "the question", positional=True)
    ckpt: Path | None = arg(None, "the model: a run fine-tuned to call tools")
    documents: Path | None = arg(None, "what search looks in: a documents.jsonl or a text file (one "
                                       "document a line); without it only the calculator is offered")
    tools: bool = arg(True, "offer the tools (--no-tools: the model answers alone)")
    max_calls: int = arg(3, "tool calls at most")
    max_new_tokens: int = arg(128, "tokens per model turn at most (a call is 60-70 BPE tokens)")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")


def tools_ask(cfg: AskConfig) -> int:
    """Ask one question with tools; print each model turn, each tool result and the answer. E.g.:

      lmlab tools ask "What is 48213 * 9127?" --ckpt runs/tools-sft \
          --documents runs/data/tools/documents.jsonl
    """
    from lmlab.align.sft import load_decoder
    from lmlab.device import resolve_device
    from lmlab.prompting.tool_data import make_tools, read_documents
    from lmlab.prompting.tools import run_tool_loop

    if not cfg.question or cfg.ckpt is None:
        raise LmlabError("give a question and --ckpt")
    docs = read_documents(Path(cfg.documents)) if cfg.documents else []
    tools = list(make_tools(docs).values()) if cfg.tools else None
    model, tok = load_decoder(Path(cfg.ckpt), resolve_device(cfg.device), "tool use")
    model.eval()
    (run,) = run_tool_loop(model, tok, [[{"role": "user", "content": cfg.question}]], tools,
                           max_calls=cfg.max_calls, max_new_tokens=cfg.max_new_tokens)
    for line in run.trace:
        print(line.strip())
    print(f"answer: {run.answer}" if run.answer is not None else f"no answer (stopped: {run.stopped})",
          file=sys.stdout)
    return 0


def cot_compare(cfg: CompareConfig) -> int:
    """Train a direct and a scratchpad model on arithmetic at equal compute; score both by digit count.

    Both models (the --preset shape) train for the same --flops on rows of --block-size tokens
    packed with whole problems of --train-digits digits (loss on the targets only), so they take
    the same steps and the direct one sees more problems: the direct one on "123+45=168", the
    scratchpad one on "123+45=[3+5+0=08,2+4+0=06,1+0+0=01]168" (multiplication:
    "123*45=[321*54:516+0294=5355]5535", partial products and running sums written units first;
    see lmlab.prompting.scratchpad). Each answers held-out problems (never trained on) of every
    --test-digits count greedily; the score is exact match of the final answer. Writes
    OUT/results.json, results.csv, cot.png (accuracy by digits), config.yaml and the runs
    OUT/direct and OUT/scratchpad (model.safetensors, metrics.jsonl, task.json), which
    lmlab cot eval reads. Prints a table (--json: one JSON object). Returns 0.

    Examples:
      lmlab cot compare --out runs/cot-add --op add --train-digits 1-4 --test-digits 1-6 --flops 2e12
      lmlab cot compare --out runs/cot-mul --op mul --train-digits 1-2 --test-digits 1-3 --json
    """
    from lmlab.prompting.cot import run_compare

    return run_compare(cfg)


def cot_eval(cfg: EvalConfig) -> int:
    """Score a cot run by greedy decoding and by self-consistency over K sampled chains, by digit count.

    Reads a run of lmlab cot compare (OUT/direct or OUT/scratchpad) and its held-out problems
    (the same seed, so none was trained on). For each digit count it reports the accuracy of
    the greedy answer and, with --self-consistency K > 1, of the majority answer of K chains
    sampled at --temperature (Wang et al. 2023; chains without an answer do not vote, a tie goes
    to the answer sampled first), the mean accuracy of one sampled chain and the share of
    problems some chain gets right. With --out, writes results.json, config.yaml and
    cot-eval.png there. Prints a table (--json: one JSON object). Returns 0.

    Examples:
      lmlab cot eval --ckpt runs/cot-add/scratchpad --self-consistency 5 --temperature 0.7
      lmlab cot eval --ckpt runs/cot-add/direct --test-digits 5-6 --test-per-digits 500 --json
    """
    from lmlab.prompting.cot import run_eval

    return run_eval(cfg)


def cot_plot(cfg: PlotConfig) -> int:
    """Draw several lmlab cot compare results side by side (accuracy by digits, direct vs scratchpad).

    Example:
      lmlab cot plot --results runs/cot-add/results.json,runs/cot-mul/results.json --out docs/cot.png
    """
    from lmlab.prompting.cot import run_plot

    return run_plot(cfg)


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
    _save_results(cfg, record)
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
    _save_results(cfg, record)
    if cfg.json:
        print(json.dumps(record))
        return 0
    print(format_induction(result))
    return 0
