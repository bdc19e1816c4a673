"""Tools in a conversation: the lab's one tool-call format, shared by the server's ``tools`` field
and the prompting tool loop.

Tools are described as OpenAI describes them (``{"type": "function", "function": {"name",
"description", "parameters"}}``, ``parameters`` a JSON Schema object). The chat template
(:mod:`lmlab.data.chat`) lists them in the system turn, one JSON object per line between
``<tools>`` and ``</tools>``; a model calls one by writing, in its turn,

    <tool_call>{"name": "calculator", "arguments": {"expression": "48213 * 9127"}}</tool_call>

(the Hermes / Qwen convention that vLLM's ``hermes`` parser reads), and a tool's result comes back
as a ``tool`` turn whose content is the result's text. In OpenAI's messages an assistant turn
carries its calls as ``tool_calls`` (``arguments`` a JSON string); :func:`flatten_messages` writes
such turns as the text the template renders, which is also the text a model learns to write.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lmlab.errors import LmlabError

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOLS_OPEN, TOOLS_CLOSE = "<tools>", "</tools>"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
           separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """JSON as Hugging Face's chat templates write it (their ``tojson`` filter: no HTML escaping, keys
    in their order); the template and this module both write JSON with it."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def check_tools(tools: Any, where: str = "tools") -> list[dict[str, Any]]:
    """Return ``tools`` (OpenAI's ``{"type": "function", "function": {...}}`` entries, or the
    ``function`` objects themselves) as a list of their ``function`` objects (``name``, ``description``,
    ``parameters``, as given: the template lists them in their own key order); raise LmlabError
    naming the first malformed entry and what it should look like."""
    if not isinstance(tools, list) or not tools:
        raise LmlabError(f"{where} must be a non-empty list of {{\"type\": \"function\", \"function\": "
                         f"{{\"name\": ..., \"parameters\": {{...}}}}}}")
    out, seen = [], set()
    for i, t in enumerate(tools):
        fn = t.get("function", t if "name" in t else None) if isinstance(t, dict) else None  # or bare
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(fn, dict):
            raise LmlabError(f"{where}[{i}] must be "
                             f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise LmlabError(f"{where}[{i}].function.name must be 1-64 letters, digits, '_' or '-', "
                             f"got {name!r}")
        if name in seen:
            raise LmlabError(f"{where}[{i}]: the tool {name!r} is given twice; name each tool once")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise LmlabError(f"{where}[{i}].function.parameters must be a JSON Schema object")
        seen.add(name)
        out.append(dict(fn))
    return out


def format_call(name: str, arguments: dict[str, Any] | str) -> str:
    """Return the text of one tool call; ``arguments`` is an object or its JSON text (kept as is)."""
    args = arguments if isinstance(arguments, str) else tojson(arguments)
    return f'{CALL_OPEN}{{"name": {tojson(name)}, "arguments": {args}}}{CALL_CLOSE}'


def tools_block(tools: Sequence[dict[str, Any]]) -> str:
    """Return the tool listing the template puts in the system turn (``tools`` as
    :func:`check_tools` returns them)."""
    return TOOLS_OPEN + "\n" + "".join(tojson(t) + "\n" for t in tools) + TOOLS_CLOSE


def flatten_messages(messages: Sequence[dict[str, Any]],
                     tools: Sequence[dict[str, Any]] | None = None) -> list[dict[str, str]]:
    """Return ``messages`` as plain ``{"role", "content"}`` turns that render, under the template
    without tools, to the same text the template renders for ``messages`` with ``tools``: the tool
    listing joins the first system turn (or makes one), and an assistant's ``tool_calls`` are
    written after its content in the call format."""
    out: list[dict[str, str]] = []
    for m in messages:
        content = m.get("content")
        text = content if isinstance(content, str) else ""
        if m.get("role") == "assistant" and m.get("tool_calls"):
            text += "".join(format_call(c["function"]["name"], c["function"]["arguments"])
                            for c in m["tool_calls"])
        out.append({"role": m.get("role"), "content": text})
    if tools:
        block = tools_block(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + block}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


@dataclass
class ToolCall:
    """A tool call parsed from a model's text: the tool's name and arguments, or, when the call is
    malformed, ``error`` saying why (the tool loop sends that back to the model as the result)."""

    name: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def openai(self) -> dict[str, Any]:
        """The call as an OpenAI ``tool_calls`` entry (``arguments`` as JSON text)."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": tojson(self.arguments)}}


@dataclass
class Parsed:
    """A model's turn split into its text before the first call and its calls."""

    content: str
    calls: list[ToolCall]


def _one_call(body: str, names: set[str] | None) -> ToolCall:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return ToolCall(None, error=f"the tool call is not valid JSON ({e.msg} at character {e.pos}); "
                                    'write {"name": ..., "arguments": {...}}')
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ToolCall(None, error='the tool call needs a "name" (a string) and "arguments" (an object)')
    name, args = obj["name"], obj.get("arguments", {})
    if isinstance(args, str):  # some models write the arguments as JSON text, as OpenAI's wire does
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            pass  # not JSON either: reported just below as arguments that are not an object
    if not isinstance(args, dict):
        return ToolCall(name, error=f"the arguments of {name!r} must be a JSON object, "
                                    f"got {tojson(args)[:60]}")
    if names is not None and name not in names:
        return ToolCall(name, args,
                        error=f"there is no tool {name!r}; the tools are {', '.join(sorted(names))}")
    return ToolCall(name, args)


def parse_tool_calls(text: str, names: Sequence[str] | None = None) -> Parsed:
    """Split a model's turn into its content (the text before the first ``<tool_call>``, stripped of
    trailing whitespace) and its calls, in order; a call left open at the end of the text (the model
    stopped at ``</tool_call>`` or its end-of-turn token) counts as closed. Calls that are not valid
    JSON, name no tool of ``names`` or have non-object arguments come back with ``error`` set."""
    start = text.find(CALL_OPEN)
    if start < 0:
        return Parsed(text, [])
    known = set(names) if names is not None else None
    calls, pos = [], start
    while pos >= 0:
        body_start = pos + len(CALL_OPEN)
        end = text.find(CALL_CLOSE, body_start)
        body = text[body_start:] if end < 0 else text[body_start:end]
        calls.append(_one_call(body.strip(), known))
        if end < 0:
            break
        pos = text.find(CALL_OPEN, end + len(CALL_CLOSE))
    return Parsed(text[:start].rstrip(), calls)


def partial_open(text: str) -> int:
    """Return how many characters at the end of ``text`` could be the start of ``<tool_call>`` (a
    stream holds those back until it knows)."""
    for k in range(min(len(CALL_OPEN) - 1, len(text)), 0, -1):
        if CALL_OPEN.startswith(text[-k:]):
            return k
    return 0
