"""Tokenizers behind one interface, all stored as a Hugging Face ``tokenizer.json``.

Kinds:
- ``bpe``: byte-level BPE with GPT-2 pre-tokenization and no prefix space (GPT-2/LLaMA-3
  style); lossless for any Unicode text.
- ``char``: one token per character seen in training; any other character falls back to
  its UTF-8 bytes (``<0xNN>`` tokens), so it is lossless too (nanoGPT's shakespeare_char).
- ``byte``: the 256 raw bytes; lossless.
- ``word``: words and punctuation runs (``\\w+|[^\\w\\s]+``), ``<unk>`` for the rest; for
  n-gram and word2vec work. It keeps words, not spacing: decode joins tokens with spaces.

Every kind reserves the special tokens ``<|endoftext|>`` (document separator), ``<|pad|>``
and the ChatML ``<|im_start|>``/``<|im_end|>``, and loads in
``transformers.PreTrainedTokenizerFast(tokenizer_file=...)`` with identical encodings.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmlab.errors import LmlabError
from lmlab.fileio import atomic_path

EOT = "<|endoftext|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
UNK = "<unk>"
SPECIAL_TOKENS = [EOT, PAD, IM_START, IM_END]
KINDS = ("bpe", "char", "byte", "word")
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


class Tokenizer:
    """A trained tokenizer: ``encode(text) -> ids``, ``decode(ids) -> text``.

    Wraps a ``tokenizers.Tokenizer`` (``.hf``); special tokens in the input text are
    encoded as their single special ids, and decode keeps them, so the round trip is exact.
    """

    def __init__(self, hf: HFTokenizer, kind: str | None = None):
        self.hf = hf
        self.kind = kind or infer_kind(hf)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def eot_id(self) -> int:
        """Id of ``<|endoftext|>``, the document separator."""
        return self.hf.token_to_id(EOT)

    @property
    def pad_id(self) -> int:
        """Id of ``<|pad|>``."""
        return self.hf.token_to_id(PAD)

    def token_to_id(self, token: str) -> int | None:
        """Return the id of a token string, or None."""
        return self.hf.token_to_id(token)

    def id_to_token(self, idx: int) -> str | None:
        """Return the token string of an id, or None."""
        return self.hf.id_to_token(idx)

    def encode(self, text: str) -> list[int]:
        """Return the token ids of ``text`` (no BOS/EOS added)."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts in parallel (Rust threads); return one id list per text."""
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Return the text of ``ids``, special tokens included."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, path: str | os.PathLike) -> None:
        """Atomically write ``tokenizer.json`` to ``path``."""
        with atomic_path(path) as tmp:
            self.hf.save(str(tmp))

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def infer_kind(hf: HFTokenizer) -> str:
    """Tell which of lmlab's kinds a ``tokenizers.Tokenizer`` is (``bpe`` for foreign BPEs)."""
    model = hf.model
    if isinstance(model, models.WordLevel):
        return "word"
    if isinstance(model, models.BPE) and getattr(model, "byte_fallback", False):
        vocab = hf.get_vocab(with_added_tokens=False)
        return "byte" if len(vocab) <= 256 else "char"
    return "bpe"


def _check_vocab(kind: str, vocab_size: int) -> None:
    floor = {"bpe": 256 + len(SPECIAL_TOKENS), "word": len(SPECIAL_TOKENS) + 2}.get(kind)
    if floor and vocab_size < floor:
        why = "the byte alphabet (256) plus special tokens" if kind == "bpe" else "special tokens"
        raise LmlabError(f"vocab size {vocab_size} is smaller than {why} ({floor}); "
                         f"use --vocab-size {floor} or more")


def _fallback_tokenizer(chars: list[str]) -> HFTokenizer:
    """BPE with no merges over ``chars`` + byte fallback: the char and byte kinds."""
    vocab = {tok: i for i, tok in enumerate(BYTE_TOKENS + chars)}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, ignore_merges=True))
    hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    hf.add_special_tokens(SPECIAL_TOKENS)
    return hf


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int = 4096,
                    min_frequency: int = 2) -> Tokenizer:
    """Train a tokenizer of ``kind`` on a stream of texts; return it.

    ``vocab_size`` counts special tokens; it is ignored by ``char`` (the vocabulary is the
    characters seen) and ``byte`` (always 256 + specials).
    """
    if kind not in KINDS:
        raise LmlabError(f"unknown tokenizer {kind!r}; choose one of {', '.join(KINDS)}")
    _check_vocab(kind, vocab_size)
    if kind == "byte":
        return Tokenizer(_fallback_tokenizer([]), "byte")
    if kind == "char":
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(t)
        if not counts:
            raise LmlabError("cannot train a tokenizer on an empty corpus; give it some text")
        chars = sorted(c for c in counts if c not in BYTE_TOKENS)
        return Tokenizer(_fallback_tokenizer(chars), "char")

    nonempty = _NonEmpty(texts)
    if kind == "bpe":
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=SPECIAL_TOKENS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        hf = HFTokenizer(models.WordLevel(unk_token=UNK))
        hf.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=SPECIAL_TOKENS + [UNK], show_progress=False)
    hf.train_from_iterator(nonempty, trainer)
    if not nonempty.seen:
        raise LmlabError("cannot train a tokenizer on an empty corpus; give it some text")
    return Tokenizer(hf, kind)


class _NonEmpty:
    """Iterator over texts that records whether any non-empty text went by."""

    def __init__(self, texts: Iterable[str]):
        self._it = iter(texts)
        self.seen = False

    def __iter__(self):
        for t in self._it:
            if t:
                self.seen = True
                yield t


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a ``tokenizer.json`` (or a folder holding one); raise LmlabError if unreadable."""
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise LmlabError(f"no tokenizer at {p}; give a tokenizer.json or a folder that has one")
    try:
        hf = HFTokenizer.from_file(str(p))
    except Exception as e:  # the Rust side raises a plain Exception
        raise LmlabError(f"{p} is not a valid tokenizer.json ({e}); re-create it with "
                         "'lmlab tokenizer train'") from None
    # A Tokenizer encodes whole texts; padding and truncation are the caller's business. Some Hugging
    # Face files enable them (all-MiniLM-L6-v2's pads every text to 128 ids and cuts it there).
    hf.no_padding()
    hf.no_truncation()
    return Tokenizer(hf)


def encode_sequence(tokenizer: Any, text: str, eos_id: int | None = None) -> list[int]:
    """Return the ids of ``text`` as an encoder-decoder reads a source or a target: with the
    tokenizer's own post-processing (T5's closing ``</s>``, BART's ``<s> ... </s>``), ending in
    ``eos_id`` (appended when the post-processing did not put it there, as lmlab's tokenizers add
    nothing). ``tokenizer``: an lmlab :class:`Tokenizer`, or anything with ``encode(text)``."""
    ids = tokenizer.hf.encode(text).ids if hasattr(tokenizer, "hf") else list(tokenizer.encode(text))
    if eos_id is not None and (not ids or ids[-1] != eos_id):
        ids.append(eos_id)
    return ids
