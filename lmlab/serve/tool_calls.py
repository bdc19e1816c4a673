"""The chat route's ``tools`` and ``tool_choice``: which tools the template lists, what the answer
starts with, and how the model's text becomes ``tool_calls`` (the format of
:mod:`lmlab.data.tools`).

``tool_choice`` as OpenAI defines it: ``"none"`` (tools listed, no call parsed), ``"auto"`` (the
default with tools: a call the model writes is parsed), ``"required"`` (the answer is started with
``<tool_call>{"name": "`` so the model must call one) and ``{"type": "function", "function":
{"name": N}}`` (started up to N's arguments). A turn with at least one well-formed call comes back
with ``tool_calls`` and ``finish_reason: "tool_calls"``; one without (or with only malformed calls)
comes back as plain text, as vLLM's Hermes parser does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmlab.data.tools import CALL_OPEN, Parsed, ToolCall, check_tools, parse_tool_calls, partial_open, tojson
from lmlab.errors import LmlabError


@dataclass
class ToolPlan:
    """What a chat request with tools does: the tools to list (None: none), the text the answer
    starts with, whether calls are parsed, and the tool names a call may use."""

    tools: list[dict[str, Any]] | None = None
    prefill: str = ""
    parse: bool = False
    names: list[str] = field(default_factory=list)


def plan_tools(tools: Any, tool_choice: Any) -> ToolPlan:
    """Return the :class:`ToolPlan` of a request's ``tools`` and ``tool_choice``; raise LmlabError
    (one line, the client gets 400) for malformed tools, an unknown choice or a named tool that
    is not among the tools."""
    if tools is None:
        if tool_choice not in (None, "none"):
            raise LmlabError("tool_choice needs tools; give tools or leave tool_choice unset")
        return ToolPlan()
    listed = check_tools(tools)
    names = [t["name"] for t in listed]
    choice = "auto" if tool_choice is None else tool_choice
    if choice == "none":
        return ToolPlan(listed, "", False, names)
    if choice == "auto":
        return ToolPlan(listed, "", True, names)
    if choice == "required":
        return ToolPlan(listed, CALL_OPEN + '{"name": "', True, names)
    fn = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise LmlabError('tool_choice must be "none", "auto", "required" or {"type": "function", '
                         '"function": {"name": ...}}')
    if fn["name"] not in names:
        raise LmlabError(f"tool_choice names {fn['name']!r}, which is not among the tools "
                         f"({', '.join(names)})")
    return ToolPlan(listed, f'{CALL_OPEN}{{"name": {tojson(fn["name"])}, "arguments": ', True, names)


def split_answer(plan: ToolPlan, text: str) -> tuple[str | None, list[ToolCall]]:
    """Return a finished answer's ``(content, well-formed calls)``; ``text`` is what the model wrote
    after the prefill. Without a well-formed call the content is the whole text (prefill included)."""
    whole = plan.prefill + text
    if not plan.parse:
        return whole, []
    parsed: Parsed = parse_tool_calls(whole, plan.names)
    calls = [c for c in parsed.calls if c.error is None]
    if not calls:
        return whole, []
    return parsed.content or None, calls


class ToolStream:
    """One streamed choice's text under a :class:`ToolPlan`: :meth:`feed` returns the content to
    send now, holding back whatever may be the start of a call; :meth:`finish` returns the content
    still to send and the calls."""

    def __init__(self, plan: ToolPlan):
        self.plan = plan
        self.text = ""  # what the model wrote (after the prefill)
        self.sent = 0  # characters of self.text already sent as content
        self.in_call = bool(plan.prefill)  # a forced call: nothing is content

    def feed(self, piece: str) -> str:
        """Take the model's next text; return the content that can be sent."""
        self.text += piece
        if self.plan.parse and not self.in_call:
            start = self.text.find(CALL_OPEN)
            self.in_call = start >= 0
            end = start if self.in_call else len(self.text) - partial_open(self.text)
        else:
            end = self.sent if self.in_call else len(self.text)
        out = self.text[self.sent:max(end, self.sent)]
        self.sent = max(self.sent, end)
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """Return the content not sent yet and the well-formed calls (none: the rest is content)."""
        content, calls = split_answer(self.plan, self.text)
        if calls:
            return ("" if self.plan.prefill else (content or "")[self.sent:]), calls
        return (self.plan.prefill + self.text) if self.plan.prefill else self.text[self.sent:], []
