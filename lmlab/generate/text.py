"""Text in, text out: streaming detokenisation, string stop sequences and :func:`generate_text`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lmlab.data.tokenizers import encode_sequence
from lmlab.errors import LmlabError
from lmlab.generate.beam import beam_search, check_beam_settings
from lmlab.generate.decode import decode
from lmlab.generate.steps import family


class IncrementalDecoder:
    """Turn a growing list of token ids into text pieces for streaming.

    Decodes the whole output each time and emits what is new, holding back text that
    ends in an incomplete UTF-8 character (U+FFFD), so multi-token characters print whole.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def push(self, token: int) -> str:
        """Add ``token``; return the newly completed text (possibly empty)."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece = text[len(self.text):]
        self.text = text
        return piece

    def flush(self) -> str:
        """Return the text still held back (an incomplete character at the end), decoded as is."""
        text = self.tokenizer.decode(self.ids)
        piece = text[len(self.text):]
        self.text = text
        return piece


class StopStrings:
    """The text of one generated row as its tokens arrive: decoded incrementally
    (:class:`IncrementalDecoder`), cut before the first of ``stops``, and holding back text that may
    be the start of a stop string until the next tokens decide."""

    def __init__(self, tokenizer: Any, stops: Sequence[str] = ()):
        self.decoder = IncrementalDecoder(tokenizer)
        self.stops = [s for s in stops if s]
        self.text = ""  # released so far
        self.pending = ""  # decoded but held back: it may begin a stop string

    def push(self, token: int) -> tuple[str, bool]:
        """Add ``token``; return the newly released text and whether a stop string ended the row."""
        tail = self.pending + self.decoder.push(token)
        text = self.text + tail
        cuts = [c for c in (text.find(s, max(0, len(self.text) - len(s))) for s in self.stops) if c >= 0]
        if cuts:
            piece = text[len(self.text):min(cuts)]
            self.text, self.pending = self.text + piece, ""
            return piece, True
        hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        hold = min(hold, len(tail))
        piece = tail[: len(tail) - hold]
        self.text, self.pending = self.text + piece, tail[len(tail) - hold:]
        return piece, False

    def flush(self) -> str:
        """Release the text held back (the row ended without a stop string); return it."""
        piece = self.pending + self.decoder.flush()
        self.text, self.pending = self.text + piece, ""
        return piece


def prompt_ids(tokenizer: Any, text: str, eos: set[int] | Sequence[int]) -> list[int]:
    """Return the ids a decoder reads for prompt ``text``: the tokenizer.json's own post-processing
    applies (Llama 3's adds <|begin_of_text|>; lmlab's tokenizers add nothing); an empty prompt starts
    from the lowest end-of-text id (LmlabError without one)."""
    ids = tokenizer.hf.encode(text).ids if hasattr(tokenizer, "hf") else list(tokenizer.encode(text))
    if not ids:
        if not eos:
            raise LmlabError("an empty prompt needs an end-of-text token to start from; give some text")
        ids = [min(eos)]
    return list(ids)


@dataclass
class Completion:
    """One row of :func:`generate_text`: the new text, its token ids and why it ended."""

    text: str
    ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "length", "eos" or "stop"


def generate_text(model: nn.Module, tokenizer: Any, prompts: str | Sequence[str], max_new_tokens: int,
                  stop: Sequence[str] | None = None, eos_id: int | Sequence[int] | None = None,
                  stream: Callable[[int, str], None] | None = None, num_beams: int = 1,
                  length_penalty: float = 1.0, early_stopping: bool | str = False,
                  **kwargs: Any) -> list[Completion]:
    """Continue text ``prompts`` (one string or several); return one :class:`Completion` per prompt.

    ``eos_id`` defaults to the tokenizer's end-of-text id (an encoder-decoder's: its config's
    end-of-sequence id); generation of a row stops at it or when its text contains a ``stop``
    string (the text is cut before the stop string; the eos token is not part of the text).
    ``stream(row, piece)`` receives text as it is produced. An empty prompt starts from the
    end-of-text token. An encoder-decoder reads each prompt as its source (tokenized with the
    tokenizer's own post-processing, e.g. T5's closing ``</s>``, and ending in the model's
    end-of-sequence id, as in training) and the completion is the target. ``num_beams > 1``
    runs :func:`lmlab.generate.beam.beam_search` (with ``length_penalty`` and
    ``early_stopping``) and cuts its best hypothesis at a stop string afterwards; otherwise the
    keyword arguments are :func:`decode`'s.
    """
    check_beam_settings(num_beams, length_penalty, early_stopping)
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    encdec = family(model) == "encdec"
    if eos_id is None:
        eos_id = model.config.eos_token_id if encdec else getattr(tokenizer, "eot_id", None)
    eos = set() if eos_id is None else ({int(eos_id)} if isinstance(eos_id, int) else set(map(int, eos_id)))
    encoded = []
    for t in texts:
        if encdec:  # a source ends with end-of-sequence, as the model was trained
            if not t:
                raise LmlabError("an encoder-decoder needs a source text to generate from; "
                                 "give a non-empty prompt")
            encoded.append(encode_sequence(tokenizer, t, model.config.eos_token_id))
            continue
        encoded.append(prompt_ids(tokenizer, t, eos))
    texts_so_far = [StopStrings(tokenizer, stop or ()) for _ in texts]
    results = [Completion(text="") for _ in texts]

    def emit(row: int, piece: str) -> None:
        if piece:
            results[row].text += piece
            if stream is not None:
                stream(row, piece)

    def on_token(row: int, token: int) -> bool:
        res = results[row]
        res.ids.append(token)
        if token in eos:
            res.finish_reason = "eos"
            return True
        piece, stopped = texts_so_far[row].push(token)
        emit(row, piece)
        if stopped:
            res.finish_reason = "stop"
        return stopped

    if num_beams > 1:
        # beam search is deterministic: the sampling settings in kwargs do not apply
        beams = beam_search(model, encoded, max_new_tokens, num_beams, length_penalty, early_stopping,
                            eos_id=eos_id, use_cache=kwargs.get("use_cache", True),
                            truncate=kwargs.get("truncate", False))
        for row, best in enumerate(beams):
            for token in best[0].tokens:  # replay the best hypothesis through the text rules
                if on_token(row, token):
                    break
    else:
        decode(model, encoded, max_new_tokens, eos_id=eos_id, on_token=on_token, **kwargs)
    for row in range(len(texts)):
        if results[row].finish_reason != "stop":  # text held back for a stop string that never came
            emit(row, texts_so_far[row].flush())
    return results
