"""Does the model use its tools, and do they help? Each held-out question is asked twice, with the
tools listed (the tool loop of :mod:`lmlab.prompting.tools` runs the calls the model writes) and
without (the model answers alone); an answer is right when it equals the reference exactly
(stripped). Reported per task: accuracy with and without tools, the gain, calls per question,
the share of calls that failed (malformed, unknown tool, refused by the tool) and the loops that
hit the call limit or the context."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmlab.config import arg, save_config
from lmlab.errors import LmlabError
from lmlab.prompting.tool_data import make_tools, read_documents
from lmlab.prompting.tools import ToolRun, run_tool_loop


@dataclass
class ToolEvalConfig:
    """Options of ``lmlab tools eval``."""

    ckpt: Path | None = arg(None, "the model: a run fine-tuned on the tool data (lmlab sft)")
    data: Path | None = arg(None, "the folder of 'lmlab tools data' (its split file and documents.jsonl)")
    split: str = arg("test", "which questions: validation or test")
    limit: int | None = arg(None, "ask at most this many questions per task")
    max_calls: int = arg(3, "tool calls per question at most (then the loop stops without an answer)")
    max_new_tokens: int = arg(128, "tokens per model turn at most (a call is 60-70 BPE tokens)")
    batch_size: int = arg(32, "questions decoded together")
    out: Path | None = arg(None, "folder for results.json, samples.md and config.yaml")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    json: bool = arg(False, "print the figures as one JSON object")


@dataclass
class TaskScore:
    """One task's figures."""

    task: str
    questions: int
    accuracy_tools: float
    accuracy_alone: float
    gain: float
    calls_per_question: float
    failed_call_share: float
    stopped_at_limit: int = 0
    stopped_at_context: int = 0


@dataclass
class ToolEvalResult:
    """Every task's figures, and the runs (not printed) for samples."""

    tasks: list[TaskScore]
    elapsed_s: float
    runs: dict[str, Any] = field(default_factory=dict, repr=False)


def read_questions(path: Path, limit: int | None) -> list[dict[str, Any]]:
    """Return the records of a split file (``messages``, ``task``, ``answer``), at most ``limit``
    per task."""
    if not path.is_file():
        raise LmlabError(f"{path} does not exist; give the folder written by 'lmlab tools data'")
    rows, seen = [], {}
    for ln in path.read_text(encoding="utf-8").splitlines():
        if ln.strip():
            r = json.loads(ln)
            seen[r["task"]] = seen.get(r["task"], 0) + 1
            if limit is None or seen[r["task"]] <= limit:
                rows.append(r)
    if not rows:
        raise LmlabError(f"{path} holds no questions")
    return rows


def is_right(run: ToolRun, answer: str) -> bool:
    """True when the loop ended with exactly the reference answer."""
    return run.answer is not None and run.answer.strip() == answer.strip()


def evaluate_tools(cfg: ToolEvalConfig) -> ToolEvalResult:
    """Run every question with and without tools; return the figures per task (and write them to
    ``cfg.out`` when given)."""
    from lmlab.align.sft import load_decoder
    from lmlab.device import resolve_device

    if cfg.ckpt is None or cfg.data is None:
        raise LmlabError("give --ckpt (the fine-tuned model) and --data (the folder of 'lmlab tools data')")
    if cfg.split not in ("validation", "test"):
        raise LmlabError(f"--split {cfg.split!r}: choose validation or test")
    rows = read_questions(Path(cfg.data) / f"{cfg.split}.jsonl", cfg.limit)
    tools = list(make_tools(read_documents(Path(cfg.data) / "documents.jsonl")).values())
    model, tok = load_decoder(Path(cfg.ckpt), resolve_device(cfg.device), "tool use")
    model.eval()
    start = time.perf_counter()
    convs = [r["messages"] for r in rows]
    opts = {"max_calls": cfg.max_calls, "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size}
    with_tools = run_tool_loop(model, tok, convs, tools, **opts)
    alone = run_tool_loop(model, tok, convs, None, **opts)
    scores = []
    for task in sorted({r["task"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["task"] == task]
        n = len(idx)
        acc_t = sum(is_right(with_tools[i], rows[i]["answer"]) for i in idx) / n
        acc_a = sum(is_right(alone[i], rows[i]["answer"]) for i in idx) / n
        calls = sum(with_tools[i].calls for i in idx)
        failed = sum(with_tools[i].failed_calls for i in idx)
        failed_share = failed / calls if calls else 0.0
        scores.append(TaskScore(task, n, acc_t, acc_a, acc_t - acc_a, calls / n, failed_share,
                                sum(with_tools[i].stopped == "max_calls" for i in idx),
                                sum(with_tools[i].stopped == "context" for i in idx)))
    result = ToolEvalResult(scores, time.perf_counter() - start, {"with_tools": with_tools, "alone": alone})
    if cfg.out is not None:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        from lmlab.fileio import write_json, write_text

        write_json(out / "results.json",
                   {"tasks": [asdict(s) for s in scores], "elapsed_s": result.elapsed_s})
        write_text(out / "samples.md", samples_markdown(rows, with_tools, alone))
        save_config(cfg, out / "config.yaml")
    return result


def samples_markdown(rows: list[dict[str, Any]], with_tools: list[ToolRun], alone: list[ToolRun],
                     per_task: int = 3) -> str:
    """Return the first ``per_task`` questions of each task with both runs' turns, as Markdown."""
    lines = ["# Tool use: samples", ""]
    for task in sorted({r["task"] for r in rows}):
        lines.append(f"## {task}")
        for i in [i for i, r in enumerate(rows) if r["task"] == task][:per_task]:
            question = rows[i]["messages"][-1]["content"].replace("\n", " / ")
            lines += ["", f"**Q:** {question}  ", f"**reference:** {rows[i]['answer']}  ",
                      "**with tools:** " + " ".join(f"`{t.strip()}`" for t in with_tools[i].trace) + "  ",
                      f"**alone:** `{(alone[i].answer or '').strip()}`"]
        lines.append("")
    return "\n".join(lines)
