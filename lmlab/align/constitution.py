"""A constitution for Constitutional AI (Bai et al. 2022): principles and few-shot examples, and the
prompts a model reads in each stage.

The default constitution is package data (``constitution.yaml`` beside this module); a user's file
in the same format goes to ``--constitution``. Each principle has a ``critique`` request and a
``revision`` request (the SL stage: the model criticises its own response, then rewrites it) and a
``choice`` question (the RL stage: a feedback model answers (A) or (B) to say which of two responses
follows the principle better). One principle is drawn per prompt or pair, from a seed and the
item's index, so a run is reproducible and does not depend on batching.

SL prompts come in two layouts, as the rest of alignment (:mod:`lmlab.align.prompts`): ``plain``,
the paper's transcript (``Human: ... Assistant: ... Critique Request: ... Critique:``) after the
few-shot examples, for a model that continues text; ``chat``, the same turns as user and assistant
messages under the chat template. The RL question is one text: the two options and
``The answer is:``; the feedback model's log-probabilities of `` (A)`` and `` (B)`` decide.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

DEFAULT = Path(__file__).with_name("constitution.yaml")
SEPARATOR = "\n\n-----\n\n"  # between few-shot examples in the plain transcript
FIELD_MARKERS = ("\n\n", "Human:", "Critique Request:", "Revision Request:", "-----")  # end a generated field
OPTIONS = ("(A)", "(B)")
PRINCIPLE_KEYS = ("name", "critique", "revision", "choice")
EXAMPLE_KEYS = ("prompt", "response", "principle", "critique", "revision")
Prompt = str | list[dict[str, Any]]  # a text, or a conversation's messages


@dataclass(frozen=True)
class Principle:
    """One principle: its name and the three texts the stages ask with."""

    name: str
    critique: str
    revision: str
    choice: str


@dataclass(frozen=True)
class Example:
    """A few-shot example of the SL stage: a response, its critique under ``principle``, the revision."""

    prompt: str
    response: str
    principle: str
    critique: str
    revision: str


@dataclass
class Constitution:
    """Principles and few-shot examples (see the module docstring). ``principles`` are those drawn
    from (perhaps a selection); ``defined`` all the file defines (the examples may use any)."""

    principles: list[Principle]
    examples: list[Example] = field(default_factory=list)
    source: str = str(DEFAULT)
    defined: list[Principle] = field(default_factory=list)

    def principle(self, name: str) -> Principle:
        """Return the principle called ``name``; raise LmlabError listing the names otherwise."""
        for p in self.defined or self.principles:
            if p.name == name:
                return p
        raise LmlabError(f"the constitution ({self.source}) has no principle {name!r}; its principles: "
                         f"{', '.join(p.name for p in self.defined or self.principles)}")

    def draw(self, seed: int, *key: int) -> Principle:
        """Return the principle drawn for the item ``key`` (its index, and the round) under ``seed``: the
        same whatever the batching."""
        return random.Random(":".join(map(str, (seed, *key)))).choice(self.principles)


def _text(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise LmlabError(f"{where} needs a non-empty text '{key}'")
    return value


def load_constitution(path: str | Path | None = None, names: Sequence[str] | None = None) -> Constitution:
    """Return the constitution in ``path`` (default: lmlab's), keeping only the principles ``names``
    when given. Raises LmlabError naming the file and entry of a malformed principle or example."""
    import yaml

    src = Path(path) if path is not None else DEFAULT
    if not src.is_file():
        raise LmlabError(f"constitution {src}: no such file; give a YAML file with 'principles' (see "
                         f"{DEFAULT})")
    try:
        data = yaml.safe_load(src.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise LmlabError(f"{src} is not valid YAML ({str(e).splitlines()[0]}); fix it") from None
    if not isinstance(data, dict) or not isinstance(data.get("principles"), list) or not data["principles"]:
        raise LmlabError(f"{src} needs a non-empty list 'principles' of {{name, critique, revision, choice}}")
    principles = []
    for i, p in enumerate(data["principles"]):
        where = f"{src}, principle {i + 1}"
        if not isinstance(p, dict):
            raise LmlabError(f"{where} is not a mapping of name, critique, revision, choice")
        principles.append(Principle(*(_text(p, k, where) for k in PRINCIPLE_KEYS)))
    known = {p.name for p in principles}
    if len(known) < len(principles):
        raise LmlabError(f"{src} names two principles alike; give each its own name")
    examples = []
    for i, e in enumerate(data.get("examples") or []):
        where = f"{src}, example {i + 1}"
        if not isinstance(e, dict):
            raise LmlabError(f"{where} is not a mapping of prompt, response, principle, critique, revision")
        ex = Example(*(_text(e, k, where) for k in EXAMPLE_KEYS))
        if ex.principle not in known:
            raise LmlabError(f"{where} names principle {ex.principle!r}, which the file does not define")
        examples.append(ex)
    c = Constitution(principles, examples, str(src), principles)
    return Constitution([c.principle(n) for n in names], examples, str(src), principles) if names else c


@dataclass
class Revision:
    """One round of the SL stage: the principle, the model's critique and its revision."""

    principle: str
    critique: str
    revision: str


def _block(prompt: Prompt, response: str, rounds: Sequence[tuple[Principle, str, str]]) -> str:
    """The plain transcript of one item: the exchange, then each round's requests and answers."""
    asked = conversation_text(prompt) if isinstance(prompt, list) else f"Human: {prompt.strip()}"
    parts = [asked, f"Assistant: {response.strip()}"]
    for p, critique, revision in rounds:
        parts += [f"Critique Request: {p.critique}", f"Critique: {critique}",
                  f"Revision Request: {p.revision}", f"Revision: {revision}"]
    return "\n\n".join(parts)


def sl_transcript(c: Constitution, shots: int, prompt: Prompt, response: str,
                  done: Sequence[Revision], principle: Principle) -> str:
    """Return the plain SL prompt for a critique: ``shots`` few-shot examples, the item's exchange and
    its finished rounds, then the critique request of ``principle``, ending with ``Critique:``."""
    blocks = [_block(e.prompt, e.response, [(c.principle(e.principle), e.critique, e.revision)])
              for e in c.examples[:shots]]
    item = _block(prompt, response, [(c.principle(r.principle), r.critique, r.revision) for r in done])
    blocks.append(item + f"\n\nCritique Request: {principle.critique}\n\nCritique:")
    return SEPARATOR.join(blocks)


def sl_revision_transcript(critique_prompt: str, critique: str, principle: Principle) -> str:
    """Return the plain SL prompt for the revision: the critique prompt, the critique, the request."""
    return f"{critique_prompt} {critique}\n\nRevision Request: {principle.revision}\n\nRevision:"


Round = tuple[Principle, str, str]  # a principle, the critique under it, the revision


def _turns(prompt: Prompt, response: str, rounds: Sequence[Round]) -> list[dict[str, str]]:
    asked = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt.strip()}]
    out = asked + [{"role": "assistant", "content": response.strip()}]
    for p, critique, revision in rounds:
        out += [{"role": "user", "content": p.critique}, {"role": "assistant", "content": critique},
                {"role": "user", "content": p.revision}, {"role": "assistant", "content": revision}]
    return out


def sl_messages(c: Constitution, shots: int, prompt: Prompt, response: str,
                done: Sequence[Revision], principle: Principle) -> list[dict[str, str]]:
    """Return the chat SL prompt for the critique: the few-shot examples and the item as turns, the
    last a user turn with the critique request of ``principle``."""
    out: list[dict[str, str]] = []
    for e in c.examples[:shots]:
        out += _turns(e.prompt, e.response, [(c.principle(e.principle), e.critique, e.revision)])
    out += _turns(prompt, response, [(c.principle(r.principle), r.critique, r.revision) for r in done])
    return out + [{"role": "user", "content": principle.critique}]


def sl_revision_messages(critique_messages: list[dict[str, str]], critique: str,
                         principle: Principle) -> list[dict[str, str]]:
    """Return the chat SL prompt for the revision: the critique prompt, the critique, the request."""
    return critique_messages + [{"role": "assistant", "content": critique},
                                {"role": "user", "content": principle.revision}]


def cut_field(text: str) -> str:
    """Return a generated field up to the first marker that starts another one (see FIELD_MARKERS),
    stripped."""
    end = min([i for i in (text.find(m) for m in FIELD_MARKERS) if i >= 0], default=len(text))
    return text[:end].strip()


def conversation_text(prompt: Prompt) -> str:
    """Return a chat prompt (messages) as ``Human:``/``Assistant:`` lines, or a text prompt as is."""
    if isinstance(prompt, str):
        return prompt
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{names[m['role']]}: {m['content']}" for m in prompt)


def choice_question(principle: Principle, prompt: Prompt, first: str, second: str) -> str:
    """Return the multiple-choice text that asks which of ``first`` (A) and ``second`` (B) follows
    ``principle`` better. A text prompt (or none) shows each option as the whole text (prompt +
    continuation); a conversation is shown once and the options are the assistant's replies."""
    if isinstance(prompt, list):
        head = ("Consider the following conversation between a human and an assistant:\n\n"
                f"{conversation_text(prompt)}")
        a, b = first.strip(), second.strip()
    else:
        head = "Consider the following two texts."
        a, b = (prompt + first).strip(), (prompt + second).strip()
    return f"{head}\n\n{principle.choice}\nOptions:\n{OPTIONS[0]} {a}\n{OPTIONS[1]} {b}\nThe answer is:"
