"""Tool use: a generation loop that stops at the tool calls a model writes, runs the tools, and
resumes with their results in the context (Toolformer's idea, in the chat format of
:mod:`lmlab.data.tools`, the same format the server's ``tools`` field speaks).

One round: the conversation is rendered with the tools listed, the model writes its turn (greedy,
up to its end-of-turn token); a turn without a call is the answer; otherwise every call runs (a
malformed call, an unknown tool or a tool's own error becomes an ``error: ...`` result the model
reads: the loop goes on) and the calls and results join the conversation for the next round.
The loop ends at an answer, after ``max_calls`` rounds of calls, or when the context is full.
Questions are run as a batch; each leaves the batch when it ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmlab.data.tools import ToolCall, parse_tool_calls, tojson
from lmlab.errors import LmlabError
from lmlab.prompting.bm25 import BM25
from lmlab.prompting.calculator import calculate

ERROR = "error: "  # how a failed call's result starts


@dataclass
class Tool:
    """A tool a model may call: its OpenAI description and the function that runs it (arguments
    in, result text out; LmlabError for arguments it refuses)."""

    name: str
    description: str
    parameters: dict[str, Any]
    run: Callable[[dict[str, Any]], str]

    def spec(self) -> dict[str, Any]:
        """The tool as OpenAI's ``tools`` entry (what the template lists and the server accepts)."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


def _string_argument(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or set(args) - {key}:
        raise LmlabError(f'give exactly {{"{key}": a string}}, got {tojson(args)[:80]}')
    return value


def calculator_tool() -> Tool:
    """The calculator (:mod:`lmlab.prompting.calculator`): ``{"expression": "48213 * 9127"}``."""
    return Tool("calculator", "Evaluate arithmetic.",
                {"type": "object", "properties": {"expression": {"type": "string"}},
                 "required": ["expression"]},
                lambda args: calculate(_string_argument(args, "expression")))


def search_tool(index: BM25, k: int = 1, max_chars: int = 160) -> Tool:
    """BM25 search over ``index``: ``{"query": ...}`` gives the ``k`` best documents, one per line,
    each cut to ``max_chars`` characters ("no results" when none shares a word with the query)."""

    def run(args: dict[str, Any]) -> str:
        hits = index.search(_string_argument(args, "query"), k)
        return "\n".join(h.text[:max_chars] for h in hits) or "no results"

    return Tool("search", "Search the documents.",
                {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}, run)


def run_call(call: ToolCall, tools: dict[str, Tool]) -> str:
    """Return the result text of ``call``: the tool's output, or ``error: ...`` saying what was wrong."""
    if call.error is not None:
        return ERROR + call.error
    try:
        return tools[str(call.name)].run(call.arguments)
    except LmlabError as e:
        return ERROR + str(e)


@dataclass
class ToolRun:
    """One question's loop: the conversation as it ended, the answer (None when the loop stopped
    without one), the calls made, how many failed, and why the loop ended ("answer", "max_calls"
    or "context")."""

    messages: list[dict[str, Any]]
    answer: str | None = None
    calls: int = 0
    failed_calls: int = 0
    stopped: str = ""
    trace: list[str] = field(default_factory=list)


def run_tool_loop(model: Any, tokenizer: Any, conversations: Sequence[Sequence[dict[str, Any]]],
                  tools: Sequence[Tool] | None, *, max_calls: int = 3, max_new_tokens: int = 128,
                  batch_size: int = 32) -> list[ToolRun]:
    """Run the loop for each conversation (ending with the user's question), greedily; return one
    :class:`ToolRun` each, in order. ``tools=None`` lists no tools and parses no calls (the model
    answers alone)."""
    from lmlab.data.chat import IM_END, encode_chat
    from lmlab.generate.decode import decode

    if max_calls < 0:
        raise LmlabError(f"max_calls={max_calls} must be >= 0")
    by_name = {t.name: t for t in tools or []}
    specs = [t.spec() for t in tools] if tools else None
    stop_ids = sorted({int(t) for t in (tokenizer.token_to_id(IM_END), tokenizer.eot_id) if t is not None})
    block = model.config.block_size
    runs = [ToolRun([dict(m) for m in c]) for c in conversations]
    active = list(range(len(runs)))
    while active:
        prompts, live = [], []
        for i in active:
            ids = encode_chat(tokenizer, runs[i].messages, add_generation_prompt=True, tools=specs).ids
            if len(ids) >= block:
                runs[i].stopped = "context"
                continue
            prompts.append(ids)
            live.append(i)
        nxt = []
        for s in range(0, len(live), batch_size):
            rows = prompts[s:s + batch_size]
            room = min(max_new_tokens, block - max(len(r) for r in rows))
            outs = decode(model, rows, room, temperature=0.0, eos_id=stop_ids)
            for i, out in zip(live[s:s + batch_size], outs):
                text = tokenizer.decode([t for t in out if t not in stop_ids])
                run = runs[i]
                run.trace.append(text)
                parsed = parse_tool_calls(text, list(by_name)) if tools else None
                if not parsed or not parsed.calls:
                    run.answer, run.stopped = text.strip(), "answer"
                    run.messages.append({"role": "assistant", "content": text})
                    continue
                if run.calls >= max_calls:
                    run.stopped = "max_calls"
                    continue
                run.calls += len(parsed.calls)
                results = [run_call(c, by_name) for c in parsed.calls]
                run.failed_calls += sum(r.startswith(ERROR) for r in results)
                run.messages.append({"role": "assistant", "content": parsed.content or None,
                                     "tool_calls": [_as_openai(c) for c in parsed.calls]})
                run.messages += [{"role": "tool", "tool_call_id": c.id, "content": r}
                                 for c, r in zip(parsed.calls, results)]
                run.trace += [f"-> {r}" for r in results]
                nxt.append(i)
        active = nxt
    return runs


def _as_openai(call: ToolCall) -> dict[str, Any]:
    """A parsed call as a ``tool_calls`` entry; a malformed one keeps what the model wrote as best
    it can (its name, or "invalid"), so the next round shows the model its own call."""
    if call.name is not None:
        return call.openai()
    return {"id": call.id, "type": "function", "function": {"name": "invalid", "arguments": "{}"}}
