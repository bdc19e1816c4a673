"""CLI face of prompting: ``lmlab tools data|eval|ask``."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from lmlab.config import arg, save_config
from lmlab.errors import LmlabError
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
