"""Conversations as token ids: the lab's one chat template (ChatML), its special tokens, and the
mask of the tokens an assistant wrote (what supervised fine-tuning learns from).

The template is a Jinja string, rendered the way Hugging Face's ``apply_chat_template`` renders
one (a sandboxed environment with ``trim_blocks`` and ``lstrip_blocks``), and the Hugging Face
export stores it as ``chat_template`` in ``tokenizer_config.json``; so ``apply_chat_template``
on the exported tokenizer gives the same ids as :func:`encode_chat`. Each turn is
``<|im_start|>ROLE\\nCONTENT<|im_end|>\\n``; with ``add_generation_prompt`` the text ends with
``<|im_start|>assistant\\n`` for the model to continue. An assistant turn's content and its
closing ``<|im_end|>`` are the assistant's tokens, so a model fine-tuned on them learns to end
its turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from lmlab.data.tokenizers import IM_END, IM_START, Tokenizer
from lmlab.data.tools import check_tools, flatten_messages
from lmlab.errors import LmlabError

CHAT_TOKENS = (IM_START, IM_END)
ROLES = ("system", "user", "assistant", "tool")
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\n\n' }}{%- endif %}"
    "{{- '<tools>\n' }}"
    "{%- for tool in tools %}"
    "{{- (tool['function'] if tool['function'] is defined else tool) | tojson }}{{- '\n' }}"
    "{%- endfor %}"
    "{{- '</tools><|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (tools and loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] %}"
    "{%- for call in message['tool_calls'] %}"
    "{{- '<tool_call>{\"name\": ' + (call['function']['name'] | tojson) + ', \"arguments\": ' }}"
    "{%- if call['function']['arguments'] is string %}{{- call['function']['arguments'] }}"
    "{%- else %}{{- call['function']['arguments'] | tojson }}{%- endif %}"
    "{{- '}</tool_call>' }}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
FIX = "add them with lmlab.data.chat.add_chat_tokens (appended after every existing id)"


@dataclass
class ChatEncoding:
    """A conversation's token ids and, per id, whether an assistant wrote it (1) or not (0)."""

    ids: list[int]
    assistant_mask: list[int]


def add_chat_tokens(tokenizer: Tokenizer) -> list[str]:
    """Append the chat template's special tokens that ``tokenizer`` lacks (lmlab's own tokenizers
    have them from training; an imported one may not), after every existing id, so old ids keep
    their meaning; return the names added."""
    missing = [t for t in CHAT_TOKENS if tokenizer.token_to_id(t) is None]
    if missing:
        tokenizer.hf.add_special_tokens(missing)
    return missing


def has_chat_tokens(tokenizer: Any) -> bool:
    """True when ``tokenizer`` (an lmlab Tokenizer) has both of the template's special tokens."""
    return all(tokenizer.token_to_id(t) is not None for t in CHAT_TOKENS)


def check_messages(messages: Sequence[dict[str, Any]], where: str = "the conversation") -> None:
    """Raise LmlabError naming ``where`` unless ``messages`` is a non-empty list of
    ``{"role": one of ROLES, "content": str}``; an assistant turn may instead carry ``tool_calls``
    (OpenAI's ``[{"function": {"name", "arguments"}}]``) with ``content`` a string or None."""
    if not messages:
        raise LmlabError(f"{where} has no messages; give a list of {{\"role\": ..., \"content\": ...}}")
    for i, m in enumerate(messages):
        calls = m.get("tool_calls") if isinstance(m, dict) else None
        if calls and m.get("role") == "assistant" and m.get("content") is None:
            pass  # a turn of tool calls only: its calls are checked below
        elif not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise LmlabError(f"{where}, message {i}: expected {{\"role\": one of {', '.join(ROLES)}, "
                             f"\"content\": a string}}, got {str(m)[:80]}")
        if calls:
            ok = m.get("role") == "assistant" and isinstance(calls, list) and all(
                isinstance(c, dict) and isinstance(c.get("function"), dict)
                and isinstance(c["function"].get("name"), str)
                and isinstance(c["function"].get("arguments"), (str, dict)) for c in calls)
            if not ok:
                raise LmlabError(f"{where}, message {i}: tool_calls must be an assistant's list of "
                                 f"{{\"function\": {{\"name\": ..., \"arguments\": ...}}}}")


@lru_cache(maxsize=8)
def _compiled(template: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from lmlab.data.tools import tojson

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = tojson  # Hugging Face's filter: the same JSON as apply_chat_template writes
    return env.from_string(template)


def render_chat(messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False,
                template: str = CHAT_TEMPLATE, tools: Sequence[dict[str, Any]] | None = None) -> str:
    """Return the text of ``messages`` under ``template`` (see the module docstring), with ``tools``
    (OpenAI function tools, :mod:`lmlab.data.tools`) listed in the system turn when given."""
    check_messages(messages)
    if tools:
        check_tools(list(tools))
    return _compiled(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                      tools=list(tools) if tools else None)


def _assistant_spans(messages: Sequence[dict[str, Any]]) -> list[tuple[int, int]]:
    """Character spans of the rendered default template that assistants wrote: each assistant
    turn's content and its closing ``<|im_end|>``."""
    spans, pos = [], 0
    for m in messages:
        head = f"{IM_START}{m['role']}\n"
        start = pos + len(head)
        end = start + len(m["content"]) + len(IM_END)
        if m["role"] == "assistant":
            spans.append((start, end))
        pos = end + 1  # the newline after <|im_end|>
    return spans


def encode_chat(tokenizer: Tokenizer, messages: Sequence[dict[str, Any]],
                add_generation_prompt: bool = False,
                tools: Sequence[dict[str, Any]] | None = None) -> ChatEncoding:
    """Return the ids of ``messages`` (with ``tools`` listed, when given) under the default template
    and the assistant mask (an assistant's tool calls are its tokens too).

    Raises LmlabError when the tokenizer lacks the template's special tokens (naming them and
    the fix) or a message is malformed.
    """
    if not has_chat_tokens(tokenizer):
        raise LmlabError(f"the tokenizer has no {' / '.join(CHAT_TOKENS)} tokens, which the chat template "
                         f"needs; {FIX}")
    text = render_chat(messages, add_generation_prompt, tools=tools)
    enc = tokenizer.hf.encode(text, add_special_tokens=False)
    spans = _assistant_spans(flatten_messages(messages, check_tools(list(tools)) if tools else None))
    mask = [int(any(a <= s and e <= b for a, b in spans)) if e > s else 0 for s, e in enc.offsets]
    return ChatEncoding(list(enc.ids), mask)
