"""Prompt templates for in-context learning: zero-shot and k-shot prompts in three formats, and the
seeded choice of the demonstrations.

A prompt is ``k`` demonstrations (input and label) followed by the query's input; the model
continues it with a label. The formats:

- ``plain``: each example is ``{input_prefix}{input}\\n{output_prefix}{label_sep}{label}``, the
  examples joined by ``separator``; the prompt ends with the query's
  ``{input_prefix}{input}\\n{output_prefix}`` and the label continuation is
  ``{label_sep}{label}`` (a leading space by default, so the label is a word of its own as in
  Brown et al. 2020's prompts);
- ``instruction``: the task's instruction, a blank line, then the ``plain`` prompt;
- ``chat``: a conversation under the lab's chat template (:func:`lmlab.data.chat.render_chat`):
  the instruction as the system turn, each demonstration as a user turn (its input) and an
  assistant turn (its label), the query as the last user turn and the assistant's generation
  prompt; the label continuation is the bare label.

With no demonstrations the same formats give the zero-shot prompt.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from lmlab.errors import LmlabError

FORMATS = ("plain", "instruction", "chat")


@dataclass(frozen=True)
class Demo:
    """One labelled example: the text the model reads and its label (the answer)."""

    input: str
    label: str


@dataclass(frozen=True)
class Template:
    """How examples become a prompt (see the module docstring for each ``format``)."""

    format: str = "plain"
    instruction: str = ""
    input_prefix: str = "Input: "
    output_prefix: str = "Output:"
    label_sep: str = " "
    separator: str = "\n\n"
    io_sep: str = "\n"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise LmlabError(f"unknown prompt format {self.format!r}; use one of {', '.join(FORMATS)}")
        if self.format in ("instruction", "chat") and not self.instruction:
            raise LmlabError(f"the {self.format} format needs an instruction; give the task one or use "
                             "--format plain")

    def example(self, demo: Demo) -> str:
        """Return one demonstration as text in the plain format (input line, output line, label)."""
        return f"{self.query(demo.input)}{self.label_sep}{demo.label}"

    def query(self, text: str) -> str:
        """Return the query's text in the plain format: its input line and the bare output prefix."""
        return f"{self.input_prefix}{text}{self.io_sep}{self.output_prefix}"

    def render(self, demos: Sequence[Demo], query: str) -> str:
        """Return the prompt of ``demos`` then ``query``, to be continued by :meth:`continuation`."""
        if self.format == "chat":
            from lmlab.data.chat import render_chat

            messages = [{"role": "system", "content": self.instruction}]
            for d in demos:
                messages += [{"role": "user", "content": d.input}, {"role": "assistant", "content": d.label}]
            messages.append({"role": "user", "content": query})
            return render_chat(messages, add_generation_prompt=True)
        text = self.separator.join([*(self.example(d) for d in demos), self.query(query)])
        return f"{self.instruction}\n\n{text}" if self.format == "instruction" else text

    def continuation(self, label: str) -> str:
        """Return the text that follows the prompt when the answer is ``label``."""
        return label if self.format == "chat" else f"{self.label_sep}{label}"

    def answer_end(self) -> str:
        """Return the text that ends an answer in a generation: the chat turn's end, else the
        first line break (each plain answer is one line)."""
        from lmlab.data.tokenizers import IM_END

        return IM_END if self.format == "chat" else "\n"


def select_demos(pool: Sequence[Demo], k: int, seed: int, exclude: Demo | None = None) -> list[Demo]:
    """Return ``k`` demonstrations drawn from ``pool`` without replacement by a generator seeded
    with ``seed`` (the same seed gives the same demonstrations), never ``exclude`` (the query).

    Raises LmlabError when ``pool`` has fewer than ``k`` usable examples, saying how many it has.
    """
    if k < 0:
        raise LmlabError(f"shots must be 0 or more, got {k}")
    usable = [d for d in pool if d != exclude] if exclude is not None else list(pool)
    if k > len(usable):
        raise LmlabError(f"{k} shots asked but only {len(usable)} labelled examples exist to draw "
                         f"demonstrations from; ask for at most {len(usable)} shots or give more examples")
    return random.Random(seed).sample(usable, k)


__all__ = ["FORMATS", "Demo", "Template", "select_demos"]
