"""An n-gram over prepared-data token ids, as a sequence model over the tokenizer's vocabulary.

``lmlab lineage`` trains its n-gram on token ids read as words (:func:`corpus_from_ids`: a
word is an id's decimal string, end-of-text is ``</s>``, each document starts at ``<s>``).
:class:`TokenNgramLM` maps between those words and the token ids, so the model can be
stepped, sampled and served like the neural models: its logits are natural-log
probabilities, one column per token id (see :class:`TokenNgramLM` for where ``<unk>``'s
probability goes). :func:`save_token_ngram` writes it as a run folder (``model.arpa``,
``tokenizer.json``, ``ngram.json``) and :func:`load_token_ngram` reads one back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.errors import LmlabError
from lmlab.fileio import atomic_path, replace_folder, write_json
from lmlab.ngram.arpa import read_arpa, write_arpa
from lmlab.ngram.model import BOS_ID, EOS_ID, UNK_ID, NgramModel

FORMAT = "lmlab-token-ngram"
ARPA, META, TOKENIZER = "model.arpa", "ngram.json", "tokenizer.json"
_REWRITE = "rerun 'lmlab lineage --overwrite' to write it again"


@dataclass
class TokenNgramLM:
    """``model`` (an n-gram whose words are decimal token ids) as a SequenceLM over ``vocab_size`` token ids.

    Row logits are natural-log probabilities of the next token id:

    * a token id the n-gram saw gets its n-gram probability, ``eot_id`` gets p(``</s>``);
    * the token ids it never saw share p(``<unk>``) equally (each gets p(<unk>) / their number),
      so every token the tokenizer can produce, seen or not, has a finite log-probability and a
      text with unseen ids still scores (the KenLM-style ``val_bpb`` of the lineage charges each
      unseen id the whole p(<unk>) instead, which is not a distribution over token ids);
    * ``<s>`` is never predicted; each row is renormalised to sum to 1 (a backoff model's
      distribution sums to 1 only up to rounding, and p(<unk>) has nowhere to go when every
      token id was seen). A token with probability 0 gets -inf, never NaN.

    The history starts at ``<s>``; an end-of-text token in it starts a new document (as
    :func:`corpus_from_ids` reads the training data), and an unseen id enters it as ``<unk>``.
    """

    model: NgramModel
    eot_id: int
    vocab_size: int
    block_size: int | None = None  # the n-gram reads any length (it only looks at the last order-1 tokens)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        if not 0 <= self.eot_id < self.vocab_size:
            raise LmlabError(f"end-of-text id {self.eot_id} is outside the vocabulary of {self.vocab_size} "
                             "token ids; give the eot_id of the prepared data the n-gram was trained on")
        word_of_token = np.full(self.vocab_size, UNK_ID, dtype=np.int64)
        token_of_word = np.full(self.model.V, -1, dtype=np.int64)
        for i, w in enumerate(self.model.vocab[EOS_ID + 1:], EOS_ID + 1):
            if not (w.isascii() and w.isdigit()) or int(w) >= self.vocab_size or int(w) == self.eot_id:
                raise LmlabError(f"n-gram word {w!r} is not a token id below {self.vocab_size} (other than "
                                 f"end-of-text {self.eot_id}); use an n-gram trained on prepared token ids")
            word_of_token[int(w)] = i
            token_of_word[i] = int(w)
        word_of_token[self.eot_id] = EOS_ID
        token_of_word[EOS_ID] = self.eot_id
        self._word_of_token = word_of_token
        self._emit_words = np.flatnonzero(token_of_word >= 0)
        self._emit_tokens = token_of_word[self._emit_words]
        unseen = word_of_token == UNK_ID
        unseen[self.eot_id] = False
        self._unseen = np.flatnonzero(unseen)

    @property
    def order(self) -> int:
        return self.model.order

    def word(self, token: int) -> int:
        """The n-gram word id of ``token`` (``</s>`` for end-of-text, ``<unk>`` for an unseen id)."""
        if not 0 <= token < self.vocab_size:
            raise LmlabError(f"token id {token} is outside the vocabulary of {self.vocab_size}; "
                             "give ids from the model's tokenizer")
        return int(self._word_of_token[token])

    def probs(self, history: list[int]) -> np.ndarray:
        """p(next token id | ``history``), ``history`` in n-gram word ids from ``<s>``; a float64
        array of ``vocab_size`` that sums to 1 (see the class doc)."""
        p = self.model.distribution(history)
        q = np.zeros(self.vocab_size)
        q[self._emit_tokens] = p[self._emit_words]
        if len(self._unseen):
            q[self._unseen] = p[UNK_ID] / len(self._unseen)
        total = q.sum()
        if not total > 0:
            raise LmlabError("the n-gram gives no token a non-zero probability after this history; "
                             "retrain it with a smoothing other than mle")
        return q / total

    def logits(self, history: list[int]) -> torch.Tensor:
        """Natural-log :meth:`probs` as a (1, vocab_size) float32 tensor on the cpu (-inf where p = 0)."""
        with np.errstate(divide="ignore"):
            lp = np.log(self.probs(history))
        return torch.from_numpy(lp.astype(np.float32))[None]

    def start(self, prompt: list[int]) -> TokenNgramStepper:
        """One request's decode state after ``prompt`` (token ids)."""
        return TokenNgramStepper(self, prompt)

    def prompt_logits(self, prompt: list[int]) -> torch.Tensor:
        """(len(prompt), vocab_size) logits: row i is for the token after ``prompt[:i+1]``."""
        if not prompt:
            return torch.empty(0, self.vocab_size)
        stepper = self.start(prompt[:1])
        rows = [stepper.prefill()] + [stepper.step(t) for t in prompt[1:]]
        return torch.cat(rows)


class TokenNgramStepper:
    """A :class:`TokenNgramLM`'s decode state: the last order-1 words of the history."""

    def __init__(self, lm: TokenNgramLM, prompt: list[int]):
        self.lm = lm
        self.history = [BOS_ID]
        for token in prompt:
            self._push(int(token))

    def _push(self, token: int) -> None:
        word = self.lm.word(token)
        if word == EOS_ID:  # end-of-text closes the document; the next one starts at <s>
            self.history = [BOS_ID]
            return
        self.history.append(word)
        keep = max(self.lm.order - 1, 1)
        if len(self.history) > keep:
            del self.history[:-keep]

    def prefill(self) -> torch.Tensor:
        """(1, vocab_size) logits for the token after the prompt."""
        return self.lm.logits(self.history)

    def step(self, token: int) -> torch.Tensor:
        """Append ``token``; return the (1, vocab_size) logits for the one after it."""
        self._push(int(token))
        return self.lm.logits(self.history)


def save_token_ngram(folder: str | os.PathLike, lm: TokenNgramLM, tokenizer_file: str | os.PathLike,
                     val_bpb: float | None = None, training_tokens: int | None = None) -> None:
    """Write ``lm`` as a run folder at ``folder``: ``model.arpa``, a copy of ``tokenizer_file`` and
    ``ngram.json`` (format, eot_id, vocab_size, order, smoothing, val_bpb, training_tokens).

    The folder is built beside ``folder`` and renamed into place when whole, so a crash leaves
    either no folder or the old one, never a half-written one.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.new-", dir=folder.parent))
    try:
        write_arpa(lm.model, work / ARPA)
        with atomic_path(work / TOKENIZER) as tmp:
            shutil.copyfile(tokenizer_file, tmp)
        write_json(work / META, {"format": FORMAT, "eot_id": lm.eot_id, "vocab_size": lm.vocab_size,
                                 "order": lm.order, "smoothing": lm.model.smoothing, "val_bpb": val_bpb,
                                 "training_tokens": training_tokens})
        replace_folder(work, folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def is_token_ngram_run(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a token n-gram run (it holds an ``ngram.json``; :func:`load_token_ngram`
    checks the rest)."""
    return (Path(folder) / META).is_file()


def read_token_ngram_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """The checked ``ngram.json`` of a token n-gram run; LmlabError naming the fix when it is damaged."""
    path = Path(folder) / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LmlabError(f"{path} does not exist, so {folder} is not an n-gram run; {_REWRITE}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LmlabError(f"{path} is damaged ({type(e).__name__}); {_REWRITE}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise LmlabError(f"{path} is not an lmlab token n-gram description (format {FORMAT!r}); {_REWRITE}")
    for key in ("eot_id", "vocab_size", "order"):
        if not isinstance(meta.get(key), int) or isinstance(meta[key], bool) or meta[key] < 0:
            raise LmlabError(f"{path} has no valid {key!r}; {_REWRITE}")
    return meta


def load_token_ngram(folder: str | os.PathLike) -> TokenNgramLM:
    """Read the token n-gram run at ``folder`` (see :func:`save_token_ngram`); return its TokenNgramLM.

    Raises LmlabError naming the damaged file and the fix.
    """
    folder = Path(folder)
    meta = read_token_ngram_meta(folder)
    if not (folder / TOKENIZER).is_file():
        raise LmlabError(f"{folder / TOKENIZER} is missing; copy the prepared data's tokenizer.json there or "
                         f"{_REWRITE}")
    if not (folder / ARPA).is_file():
        raise LmlabError(f"{folder / ARPA} is missing; {_REWRITE}")
    try:
        model = read_arpa(folder / ARPA)
    except LmlabError as e:
        raise LmlabError(f"{e} (or {_REWRITE})") from None
    if model.order != meta["order"]:
        raise LmlabError(f"{folder / ARPA} has order {model.order} but {folder / META} says {meta['order']}; "
                         f"{_REWRITE}")
    if isinstance(meta.get("smoothing"), str):
        model.smoothing = meta["smoothing"]
    try:
        return TokenNgramLM(model, meta["eot_id"], meta["vocab_size"])
    except LmlabError as e:
        raise LmlabError(f"{folder}: {e} (or {_REWRITE})") from None
