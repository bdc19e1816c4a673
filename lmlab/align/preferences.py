"""Preference data: pairs of a prompt and two responses, the chosen one and the rejected one.

Two sources, one entry (:func:`load_pairs`):

- a JSONL file, one pair a line: ``{"prompt": str | messages, "chosen": str, "rejected": str}``
  with an optional ``"margin": float`` (how much better the chosen one is, for a margin loss).
  ``prompt`` may be ``""`` (two whole texts compared) and may be absent (the same). ``chosen``
  and ``rejected`` may also be a one-message list ``[{"role": "assistant", "content": ...}]``
  (TRL's conversational format). The pairs are split 80/10/10 into train/validation/test by a
  fixed hash of each record (:func:`lmlab.data.labelled.hashed_split`), the same on every machine.
- a labelled corpus with ratings (``sentiment-movies``, ... or any spec
  :func:`lmlab.data.labelled.get_labelled` reads): human pairs from the ratings
  (:func:`pairs_from_ratings`), each split's pairs made from that split's texts only.

A record with a missing key, an empty response, or the same chosen and rejected text raises
LmlabError naming the file and line.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

SPLITS = ("train", "validation", "test")
ROUNDS = 4  # pairs_from_ratings: each text meets up to this many partners


@dataclass(frozen=True)
class Pair:
    """One preference: ``prompt`` (text, ``""`` or a list of chat messages) and two responses,
    ``chosen`` preferred over ``rejected``; ``margin`` (None: not given) says by how much;
    ``where`` names the source (``file:line`` or ``corpus:split``) for messages."""

    prompt: str | tuple[dict[str, str], ...]
    chosen: str
    rejected: str
    margin: float | None = None
    where: str = ""

    @property
    def messages(self) -> list[dict[str, str]] | None:
        """The prompt as a list of chat messages, or None when it is plain text."""
        return list(self.prompt) if isinstance(self.prompt, tuple) else None

    def prompt_value(self) -> str | list[dict[str, str]]:
        """The prompt as :mod:`lmlab.align.prompts` takes it: text, or a list of messages."""
        return self.messages if self.messages is not None else str(self.prompt)


def prompt_text(prompt: str | list[dict[str, str]] | tuple[dict[str, str], ...]) -> str:
    """Return ``prompt`` as text: itself, or chat messages rendered with the chat template and the
    assistant's generation prompt (so ``prompt_text(p) + response`` is the whole conversation)."""
    if isinstance(prompt, (list, tuple)):
        from lmlab.data.chat import render_chat

        return render_chat(list(prompt), add_generation_prompt=True)
    return prompt


def full_text(prompt: str | list[dict[str, str]] | tuple[dict[str, str], ...], response: str) -> str:
    """Return the text a reward model reads for ``response`` to ``prompt``: the prompt's text (see
    :func:`prompt_text`) followed by the response, joined as they are (no separator added)."""
    return prompt_text(prompt) + response


def _response(value: Any, key: str, where: str) -> str:
    """A response field as text: a string, or a one-message assistant list."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) \
            and value[0].get("role") == "assistant" and isinstance(value[0].get("content"), str):
        value = value[0]["content"]
    if not isinstance(value, str):
        raise LmlabError(f"{where}: {key!r} must be a string (or [{{\"role\": \"assistant\", \"content\": "
                         f"...}}]), got {type(value).__name__}")
    if not value.strip():
        raise LmlabError(f"{where}: {key!r} is empty; give both responses some text, or drop the line")
    return value


def pair_from_record(obj: dict[str, Any], where: str) -> Pair:
    """Return the :class:`Pair` of one JSONL record; raise LmlabError naming ``where`` for a missing
    key, a bad type, an empty response or identical responses."""
    missing = [k for k in ("chosen", "rejected") if k not in obj]
    if missing:
        got = ", ".join(sorted(obj)) or "(none)"
        raise LmlabError(f"{where} has no {' or '.join(repr(k) for k in missing)}; each line needs "
                         '{"prompt": ..., "chosen": ..., "rejected": ...}' + f" (got keys {got})")
    prompt = obj.get("prompt", "")
    if isinstance(prompt, list):
        from lmlab.data.chat import check_messages

        check_messages(prompt, where)
        prompt = tuple({"role": m["role"], "content": m["content"]} for m in prompt)
    elif not isinstance(prompt, str):
        raise LmlabError(f"{where}: 'prompt' must be a string or a list of messages, "
                         f"got {type(prompt).__name__}")
    chosen = _response(obj["chosen"], "chosen", where)
    rejected = _response(obj["rejected"], "rejected", where)
    if chosen == rejected:
        raise LmlabError(f"{where}: 'chosen' and 'rejected' are the same text, so there is nothing to "
                         "prefer; drop the line or fix one of them")
    margin = obj.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        raise LmlabError(f"{where}: 'margin' must be a number, got {margin!r}")
    return Pair(prompt, chosen, rejected, None if margin is None else float(margin), where)


def read_pairs(path: str | Path) -> list[Pair]:
    """Return every pair of the JSONL file ``path`` in file order (see the module docstring)."""
    from lmlab.data.archives import decode_utf8, jsonl_objects

    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"{path} does not exist; give a JSONL file of prompt/chosen/rejected pairs")
    text, _ = decode_utf8(path.read_bytes())
    pairs = [pair_from_record(obj, f"{path}:{lineno}") for lineno, obj in jsonl_objects(text, path)]
    if not pairs:
        raise LmlabError(f"{path} holds no pairs; write one {{\"prompt\", \"chosen\", \"rejected\"}} a line")
    return pairs


def split_of(pair: Pair) -> str:
    """Return the split (train, validation, test) of a file's pair: a fixed hash of its content."""
    from lmlab.data.labelled import hashed_split

    key = json.dumps([pair.prompt, pair.chosen, pair.rejected], sort_keys=True, ensure_ascii=False)
    return hashed_split("pair:" + key)


def pairs_from_ratings(corpus: str, split: str, margin: float = 1.0, seed: int = 0,
                       max_pairs: int | None = None, rounds: int = ROUNDS) -> list[Pair]:
    """Return human preference pairs from the rated texts of ``split`` of the labelled ``corpus``.

    In each of ``rounds`` rounds the texts are shuffled (``random.Random(seed + round)``) and paired
    off in order, first with second, third with fourth, ...; a pair is kept when the two mean
    ratings differ by more than ``margin`` (and the two texts were not paired before), the more
    positive text chosen, with ``margin`` = the rating difference and an empty prompt. At most
    ``max_pairs`` are returned, the earlier rounds first. Raises LmlabError when the train split
    gives no pair (no ratings, or no two texts differing enough); a held-out split may give none.
    """
    from lmlab.data.labelled import get_labelled

    if margin < 0:
        raise LmlabError(f"--margin must not be negative (got {margin}); pairs differ by more than it")
    rated = get_labelled(corpus).examples(split, "regress")
    if not rated and split == "train":
        raise LmlabError(f"{corpus} ({split}) has no rated texts to make preference pairs from; give a "
                         "corpus with ratings (e.g. sentiment-movies) or a JSONL of pairs")
    out, seen = [], set()
    for r in range(rounds):
        order = list(range(len(rated)))
        random.Random(seed + r).shuffle(order)
        for a, b in zip(order[0::2], order[1::2]):
            ea, eb = rated[a], rated[b]
            key = (min(a, b), max(a, b))
            if key in seen or abs(ea.rating - eb.rating) <= margin or ea.text == eb.text:
                continue
            seen.add(key)
            hi, lo = (ea, eb) if ea.rating > eb.rating else (eb, ea)
            out.append(Pair("", hi.text, lo.text, round(hi.rating - lo.rating, 6), f"{corpus}:{split}"))
            if max_pairs is not None and len(out) >= max_pairs:
                return out
    if not out and split == "train":
        raise LmlabError(f"no two texts of {corpus} ({split}) differ in rating by more than --margin "
                         f"{margin}; lower --margin")
    return out


def load_pairs(spec: str | Path, split: str, margin: float = 1.0, seed: int = 0,
               max_pairs: int | None = None) -> list[Pair]:
    """Return the pairs of ``split`` (train, validation or test) of ``spec``: a JSONL file of pairs
    (its hashed split), or a labelled corpus with ratings (:func:`pairs_from_ratings` with
    ``margin``, ``seed``, ``max_pairs``). A split may be empty for a small file; a train split
    never is."""
    if split not in SPLITS:
        raise LmlabError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    path = Path(spec)
    if path.is_file():
        pairs = [p for p in read_pairs(path) if split_of(p) == split]
        if split == "train" and not pairs:
            raise LmlabError(f"{path}: every pair falls in the held-out splits; give more pairs (about 80% "
                             "go to training)")
        return pairs[:max_pairs] if max_pairs is not None else pairs
    try:
        from lmlab.data.labelled import get_labelled

        get_labelled(str(spec))
    except LmlabError as e:
        raise LmlabError(f"--data {spec}: not a JSONL file of pairs, nor labelled data with ratings "
                         f"({e})") from None
    return pairs_from_ratings(str(spec), split, margin, seed, max_pairs)


class PairBatches:
    """The Trainer's batch source over ``n`` pairs: shuffled epochs of pair indices (the order and
    resumable position of :class:`lmlab.adapt.examples.ExampleBatches`), each batch of indices made
    into tensors by ``make(indices) -> batch``."""

    def __init__(self, n: int, batch_size: int, seed: int, make: Callable[[list[int]], dict[str, Any]]):
        import torch

        from lmlab.adapt.examples import ExampleBatches

        self.order = ExampleBatches([[i] for i in range(n)], [0.0] * n, batch_size, seed, 0,
                                    torch.device("cpu"), regression=True)
        self.make = make

    def next(self) -> dict[str, Any]:
        """Return the next batch: ``make`` of the next ``batch_size`` pair indices."""
        return self.make(self.order.next()["input_ids"][:, 0].tolist())

    def state_dict(self) -> dict[str, Any]:
        """Return the position (epoch, offset)."""
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a position returned by :meth:`state_dict`."""
        self.order.load_state_dict(state)
