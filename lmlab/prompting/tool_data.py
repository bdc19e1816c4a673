"""Tool-use training and test data, made by code from real data (Toolformer's idea: show the model
calls that help, and let it learn when and how to make them).

Two kinds of question, each answerable with a tool and hard without one:

- ``arithmetic``: "What is 48213 * 9127?" with operands of ``min_digits`` to ``max_digits`` digits
  (half additions, half multiplications; :func:`lmlab.data.instructions.arithmetic_items`). The
  tool turn calls ``calculator`` with the expression and answers with its result.
- ``play`` and ``speaker``: "Which play by Shakespeare are these lines from?" / "In Shakespeare's
  Hamlet, who speaks these lines?" over a speech's first lines (the instruction set's questions).
  The tool turn calls ``search`` with the quote's first words over a BM25 index of every speech
  (``documents.jsonl``: "Title. Speaker: lines"), and answers with the title or the name. As in
  Toolformer, a call is kept for training only where it helps: a search whose result does not hold
  the answer is not shown as a tool example (the question is still asked directly).

Every training question appears once, as a tool conversation (the tools listed in the system turn)
or as a direct one (no tools: the answer alone), half and half by a seeded draw; so one model learns
both, and the tools in the prompt decide which it does. Test questions are about held-out speeches
and problems (the instruction set's splits). Files: ``train.jsonl`` (SFT records: ``messages``,
``tools`` when listed, ``task``, ``answer``), ``validation.jsonl`` and ``test.jsonl`` (the question
as ``messages``, ``task``, ``answer``), ``documents.jsonl`` (the search index) and ``meta.json``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.config import arg
from lmlab.data.tools import tojson
from lmlab.errors import LmlabError
from lmlab.fileio import write_json, write_text
from lmlab.prompting.bm25 import BM25
from lmlab.prompting.tools import Tool, calculator_tool, search_tool

TASKS = ("arithmetic", "play", "speaker")
QUERY_WORDS = 8  # a search call quotes this many words of the speech


@dataclass
class Question:
    """A question with its task, split and answer, and the tool call that answers it."""

    task: str
    split: str
    question: str
    answer: str
    tool: str
    arguments: dict[str, Any]


@dataclass
class ToolDataConfig:
    """Options of ``lmlab tools data``."""

    out: Path | None = arg(None, "folder for train/validation/test.jsonl, documents.jsonl and meta.json")
    tasks: list[str] = arg(list(TASKS), "which: arithmetic, play, speaker")
    per_task: int = arg(2000, "training questions per task (held-out splits get an eighth each)")
    min_digits: int = arg(4, "digits of the smallest arithmetic operand")
    max_digits: int = arg(6, "digits of the largest arithmetic operand")
    tool_share: float = arg(0.5, "share of training questions shown with a tool call (the rest direct)")
    shakespeare: str = arg("shakespeare", "the plays: 'shakespeare' (built-in corpus) or a folder of .txt")
    seed: int = arg(0, "seed of the questions and of the tool/direct draw")
    overwrite: bool = arg(False, "replace an --out that already holds a data set")


def speech_documents(quotes: list[Any]) -> list[str]:
    """Return the search index's documents, one per speech: ``"Title. Speaker: lines"`` (lines
    joined by " / ")."""
    return [f"{q.title}. {q.speaker}: {' / '.join(q.text.splitlines())}" for q in quotes]


def make_questions(tasks: list[str], per_task: int, seed: int, shakespeare: str = "shakespeare",
                   min_digits: int = 4, max_digits: int = 6) -> tuple[list[Question], list[str]]:
    """Return the questions (up to ``per_task`` per task, each split) and the search documents."""
    from lmlab.data.instructions import arithmetic_items, play_quotes, shakespeare_folder

    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise LmlabError(f"unknown tool task {bad[0] if bad else '(none)'!r}; choose from {', '.join(TASKS)}")
    if not 1 <= min_digits <= max_digits <= 30:
        raise LmlabError(f"digits {min_digits}..{max_digits}: give 1 <= --min-digits <= --max-digits <= 30")
    rng = random.Random(seed)
    out: list[Question] = []
    docs: list[str] = []
    if "arithmetic" in tasks:
        items = arithmetic_items(3 * per_task, 10 ** max_digits - 1, 10 ** max_digits - 1, rng,
                                 min_operand=10 ** (min_digits - 1))
        out += [Question("arithmetic", it.split, it.question, it.answer, "calculator",
                         {"expression": it.question.removeprefix("What is ").removesuffix("?")})
                for it in items]
    if "play" in tasks or "speaker" in tasks:
        quotes = play_quotes(shakespeare_folder(shakespeare))
        docs = speech_documents(quotes)
        for q in quotes:
            task = rng.choice([t for t in ("play", "speaker") if t in tasks])
            question = (f"Which play by Shakespeare are these lines from?\n\n{q.text}" if task == "play"
                        else f"In Shakespeare's {q.title}, who speaks these lines?\n\n{q.text}")
            query = " ".join(q.text.split()[:QUERY_WORDS])
            out.append(Question(task, q.split, question, q.title if task == "play" else q.speaker,
                                "search", {"query": query}))
    rng.shuffle(out)
    kept: list[Question] = []
    counts: dict[tuple[str, str], int] = {}
    for q in out:
        key = (q.task, q.split)
        if counts.get(key, 0) < (per_task if q.split == "train" else max(1, per_task // 8)):
            counts[key] = counts.get(key, 0) + 1
            kept.append(q)
    return kept, docs


def _user(q: Question) -> list[dict[str, Any]]:
    return [{"role": "user", "content": q.question}]


def tool_record(q: Question, tools: dict[str, Tool]) -> dict[str, Any] | None:
    """Return the SFT record of ``q`` answered with its tool (the tool really runs), or None when
    the result does not hold the answer (the call would not help)."""
    tool = tools[q.tool]
    result = tool.run(q.arguments)
    if q.answer not in result:
        return None
    call = {"id": "call_0", "type": "function",
            "function": {"name": q.tool, "arguments": tojson(q.arguments)}}
    messages = _user(q) + [{"role": "assistant", "content": None, "tool_calls": [call]},
                           {"role": "tool", "tool_call_id": "call_0", "content": result},
                           {"role": "assistant", "content": q.answer}]
    return {"messages": messages, "tools": [t.spec() for t in tools.values()], "task": q.task,
            "answer": q.answer, "mode": "tools"}


def write_tool_data(out: Path, tasks: list[str], per_task: int = 2000, seed: int = 0,
                    shakespeare: str = "shakespeare", min_digits: int = 4, max_digits: int = 6,
                    tool_share: float = 0.5, overwrite: bool = False) -> dict[str, Any]:
    """Write the data set into ``out`` (see the module docstring); return ``meta.json``'s content."""
    if (Path(out) / "meta.json").exists() and not overwrite:
        raise LmlabError(f"{out} already holds a tool data set; pass --overwrite to replace it or choose "
                         "another --out")
    if per_task < 1:
        raise LmlabError(f"--per-task {per_task} must be at least 1")
    if not 0.0 <= tool_share <= 1.0:
        raise LmlabError(f"--tool-share {tool_share} must be between 0 and 1")
    questions, docs = make_questions(tasks, per_task, seed, shakespeare, min_digits, max_digits)
    tools = make_tools(docs)
    rng = random.Random(seed + 1)
    train, unhelpful = [], 0
    for q in questions:
        if q.split != "train":
            continue
        record = None
        if rng.random() < tool_share:
            record = tool_record(q, tools)
            unhelpful += record is None
        if record is None:
            record = {"messages": _user(q) + [{"role": "assistant", "content": q.answer}], "task": q.task,
                      "answer": q.answer, "mode": "direct"}
        train.append(record)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "train.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train))
    for split in ("validation", "test"):
        rows = [{"messages": _user(q), "task": q.task, "answer": q.answer}
                for q in questions if q.split == split]
        write_text(out / f"{split}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_text(out / "documents.jsonl", "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n"
                                                        for d in docs))
    meta = {"tasks": tasks, "per_task": per_task, "seed": seed, "min_digits": min_digits,
            "max_digits": max_digits, "tool_share": tool_share, "documents": len(docs),
            "train": {m: sum(r["mode"] == m for r in train) for m in ("tools", "direct")},
            "unhelpful_calls_dropped": unhelpful,
            "validation": sum(q.split == "validation" for q in questions),
            "test": sum(q.split == "test" for q in questions)}
    write_json(out / "meta.json", meta)
    return meta


def make_tools(documents: list[str]) -> dict[str, Tool]:
    """Return the data set's tools by name: the calculator, and search over ``documents`` when any."""
    tools = {"calculator": calculator_tool()}
    if documents:
        tools["search"] = search_tool(BM25(documents))
    return tools


def read_documents(path: Path) -> list[str]:
    """Return the documents of a ``documents.jsonl`` (``{"text": ...}`` per line) or a text file (one
    per non-empty line)."""
    if not path.is_file():
        raise LmlabError(f"{path} does not exist; give the documents.jsonl of 'lmlab tools data' "
                         "or a text file")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if path.suffix == ".jsonl":
        return [json.loads(ln)["text"] for ln in lines]
    return lines
