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
from lmlab.errors import LmlabError

CHAT_TOKENS = (IM_START, IM_END)
ROLES = ("system", "user", "assistant", "tool")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
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
    ``{"role": one of ROLES, "content": str}``."""
    if not messages:
        raise LmlabError(f"{where} has no messages; give a list of {{\"role\": ..., \"content\": ...}}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise LmlabError(f"{where}, message {i}: expected {{\"role\": one of {', '.join(ROLES)}, "
                             f"\"content\": a string}}, got {str(m)[:80]}")


@lru_cache(maxsize=8)
def _compiled(template: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template)


def render_chat(messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False,
                template: str = CHAT_TEMPLATE) -> str:
    """Return the text of ``messages`` under ``template`` (see the module docstring)."""
    check_messages(messages)
    return _compiled(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt)


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
                add_generation_prompt: bool = False) -> ChatEncoding:
    """Return the ids of ``messages`` under the default template and the assistant mask.

    Raises LmlabError when the tokenizer lacks the template's special tokens (naming them and
    the fix) or a message is malformed.
    """
    if not has_chat_tokens(tokenizer):
        raise LmlabError(f"the tokenizer has no {' / '.join(CHAT_TOKENS)} tokens, which the chat template "
                         f"needs; {FIX}")
    text = render_chat(messages, add_generation_prompt)
    enc = tokenizer.hf.encode(text, add_special_tokens=False)
    spans = _assistant_spans(messages)
    mask = [int(any(a <= s and e <= b for a, b in spans)) if e > s else 0 for s, e in enc.offsets]
    return ChatEncoding(list(enc.ids), mask)
