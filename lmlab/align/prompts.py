"""Prompts for alignment, and how a prompt and a response become token ids.

Two layouts (``template``):

- ``plain``: a raw language model continues text. The prompt is the end-of-text token (a
  document start, so an empty prompt still predicts the first response token) then the prompt's
  ids; the response's ids follow, tokenised on their own, and an ended response closes with the
  end-of-text token. This is the sentiment task's layout (a review prefix and its continuation).
- ``chat``: the prompt is a user turn under the chat template with the assistant's generation
  prompt (:func:`lmlab.data.chat.encode_chat`); the response is the assistant's text, closed
  with ``<|im_end|>``.

Prompt sources (:func:`read_prompts`): a JSONL file (``{"prompt": ...}`` or ``{"messages":
[...]}`` per line; a messages prompt is rendered as the chat prompt), a text file (one prompt a
line), or ``reviews:CORPUS`` (``reviews:sentiment-movies``): the first 2 to 8 words (drawn from
a fixed seed per snippet) of each review snippet of a split of a labelled corpus, the prompts of
the sentiment task (Ziegler et al. 2019; DPO sec. 6.1).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

TEMPLATES = ("plain", "chat")
REVIEWS = "reviews:"
PREFIX_WORDS = (2, 8)  # a review prompt keeps this many of the snippet's first words (inclusive)


@dataclass
class PromptIds:
    """A prompt's ids, and what ends a response in this layout (``stop_ids``: any of them)."""

    ids: list[int]
    stop_ids: list[int]


def stop_ids(tokenizer: Any, template: str) -> list[int]:
    """Return the ids that end a response: ``<|im_end|>`` (chat) or end-of-text (plain)."""
    from lmlab.data.chat import IM_END

    check_template(template)
    tok = tokenizer.token_to_id(IM_END) if template == "chat" else tokenizer.eot_id
    if tok is None:
        raise LmlabError(f"the tokenizer has no {'<|im_end|>' if template == 'chat' else '<|endoftext|>'} "
                         "token to end a response; use --template "
                         f"{'plain' if template == 'chat' else 'chat'} or a tokenizer with it")
    return [int(tok)]


def check_template(template: str) -> None:
    """Raise LmlabError unless ``template`` is one of TEMPLATES."""
    if template not in TEMPLATES:
        raise LmlabError(f"--template {template!r} is not one of {', '.join(TEMPLATES)}")


def encode_prompt(tokenizer: Any, prompt: str | list[dict[str, Any]], template: str) -> PromptIds:
    """Return the ids of ``prompt`` in ``template``'s layout (a list of messages is a chat prompt
    whatever the template) and the ids that end a response (see the module docstring)."""
    from lmlab.data.chat import encode_chat

    check_template(template)
    if isinstance(prompt, list) or template == "chat":
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return PromptIds(encode_chat(tokenizer, messages, add_generation_prompt=True).ids,
                         stop_ids(tokenizer, "chat"))
    return PromptIds([tokenizer.eot_id] + tokenizer.encode(prompt), stop_ids(tokenizer, "plain"))


def encode_response(tokenizer: Any, response: str, template: str, ended: bool = True) -> list[int]:
    """Return the ids of ``response``, closed by the layout's stop token when ``ended``."""
    ids = tokenizer.encode(response)
    return ids + stop_ids(tokenizer, template)[:1] if ended else ids


def review_prompts(corpus: str, split: str = "train", limit: int | None = None) -> list[str]:
    """Return the sentiment task's prompts: the first 2 to 8 words of each snippet of ``split`` of
    the labelled ``corpus`` (the count fixed per snippet by a hash, so the same on every machine),
    at most ``limit`` of them in the corpus's order."""
    from lmlab.data.labelled import get_labelled

    out = []
    for text in get_labelled(corpus).texts(split):
        words = text.split()
        if len(words) < PREFIX_WORDS[0] + 2:
            continue  # too short to leave anything to continue
        h = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16)
        k = PREFIX_WORDS[0] + h % (PREFIX_WORDS[1] - PREFIX_WORDS[0] + 1)
        out.append(" ".join(words[:min(k, len(words) - 2)]))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise LmlabError(f"{corpus} ({split}) has no snippet long enough to make a prompt from")
    return out


def read_prompts(spec: str | Path, split: str = "train", limit: int | None = None) -> list[str | list[dict]]:
    """Return prompts from ``spec`` (see the module docstring): strings, or message lists for chat
    prompts. Raises LmlabError naming the file and line of a bad record."""
    from lmlab.data.archives import decode_utf8, jsonl_objects
    from lmlab.data.chat import check_messages

    spec = str(spec)
    if spec.startswith(REVIEWS):
        return list(review_prompts(spec[len(REVIEWS):], split, limit))
    path = Path(spec)
    if not path.is_file():
        raise LmlabError(f"prompts {spec!r}: no such file; give a .jsonl/.txt file of prompts or "
                         f"{REVIEWS}CORPUS (e.g. {REVIEWS}sentiment-movies)")
    text, _ = decode_utf8(path.read_bytes())
    out: list[str | list[dict]] = []
    if path.suffix == ".jsonl":
        for lineno, obj in jsonl_objects(text, path):
            if isinstance(obj.get("prompt"), str):
                out.append(obj["prompt"])
            elif isinstance(obj.get("prompt"), list) or isinstance(obj.get("messages"), list):
                messages = obj.get("prompt") if isinstance(obj.get("prompt"), list) else obj["messages"]
                check_messages(messages, f"{path}:{lineno}")
                if messages[-1]["role"] == "assistant":
                    messages = messages[:-1]  # the answer given: the prompt is what came before
                if not messages:
                    raise LmlabError(f"{path}:{lineno}: the conversation has no turn before the assistant's")
                out.append(messages)
            else:
                raise LmlabError(f"{path}:{lineno} has no 'prompt' (a string or messages) or 'messages'; "
                                 f"got keys {', '.join(sorted(obj)) or '(none)'}")
    else:
        out = [line for line in text.splitlines() if line.strip()]
    if not out:
        raise LmlabError(f"{path} holds no prompts")
    return out[:limit] if limit is not None else out
