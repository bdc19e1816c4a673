"""CLI face of prompting: ``lmlab tools data|eval|ask`` and ``lmlab cot compare|eval|plot`` (a
scratchpad against direct answers at equal training compute; greedy against self-consistency)."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from lmlab.config import arg, save_config
from lmlab.errors import LmlabError
from lmlab.prompting.cot import CompareConfig, EvalConfig, PlotConfig
from lmlab.prompting.tool_data import ToolDataConfig, write_tool_data
from lmlab.prompting.tool_eval import ToolEvalConfig, evaluate_tools


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
