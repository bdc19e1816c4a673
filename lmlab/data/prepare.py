"""Prepared token data: corpus -> tokenizer.json + train.bin/val.bin + meta.json.

Each split is the concatenation, over its documents in order, of ``encode(document)``
followed by the end-of-text id, stored flat as uint16 (uint32 when the vocabulary does
not fit). ``meta.json`` records token, document and UTF-8 byte counts per split (bits per
byte needs the bytes) and a fingerprint of the inputs, so running ``prepare`` again on
the same inputs reuses the result. Everything is built in a temporary folder beside the
output and renamed into place, so an interrupted run leaves nothing half-written.

Example data (synthetic tasks such as passkey retrieval, see :func:`write_examples`) adds two
things: ``meta["example_len"]``, every split being a sequence of examples of exactly that many
tokens (training windows then start at example boundaries and hold one example each), and a
loss mask per split, ``train.mask.bin``/``val.mask.bin`` (uint8, one per token: 1 = the token
is a training target, 0 = context only), with ``meta["loss_mask"]`` true.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.console import progress
from lmlab.data.corpora import Corpus, get_corpus
from lmlab.data.special import ROLE_NAMES, add_objective_tokens, special_token
from lmlab.data.tokenizers import Tokenizer, load_tokenizer, train_tokenizer
from lmlab.errors import LmlabError
from lmlab.fileio import replace_folder, write_json

FORMAT = 1
FILES = ("tokenizer.json", "train.bin", "val.bin", "meta.json")
MASK_FILES = ("train.mask.bin", "val.mask.bin")
CHUNK_CHARS = 4 << 20  # encode about this much text per parallel batch


@dataclass
class PreparedData:
    """A prepared-data folder: ``meta`` dict and the two splits as read-only memmaps."""

    dir: Path
    meta: dict[str, Any]
    train: np.memmap
    val: np.memmap
    masks: dict[str, np.ndarray] | None = None  # split -> loss mask (example data), else None

    def tokenizer(self) -> Tokenizer:
        """Load and return the folder's tokenizer."""
        return load_tokenizer(self.dir / "tokenizer.json")

    def bytes_per_token(self, split: str = "val") -> float:
        """UTF-8 bytes of text per token in ``split`` (for bits per byte on part of a split)."""
        s = self.meta["splits"][split]
        return s["bytes"] / max(1, s["tokens"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eot_id(self) -> int:
        return int(self.meta["eot_id"])

    @property
    def example_len(self) -> int | None:
        """Tokens per example when the splits are sequences of equal examples, else None."""
        n = self.meta.get("example_len")
        return None if n is None else int(n)

    def loss_mask(self, split: str) -> np.ndarray | None:
        """The loss mask of ``split`` (1 = training target), or None when every token is one."""
        return None if self.masks is None else self.masks[split]


def read_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``meta.json``; raise LmlabError naming the problem if corrupt."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise LmlabError(f"{folder} is not prepared data (no meta.json); "
                         f"create it with 'lmlab data prepare --out {folder}'")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        for key in ("vocab_size", "dtype", "eot_id", "splits"):
            meta[key]
        for split in ("train", "val"):
            int(meta["splits"][split]["tokens"]), int(meta["splits"][split]["bytes"])
        np.dtype(meta["dtype"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise LmlabError(f"{path} is corrupt ({type(e).__name__}: {e}); re-run 'lmlab data prepare' "
                         "with --overwrite") from None
    return meta


def load_prepared(folder: str | os.PathLike) -> PreparedData:
    """Open a prepared-data folder; raise LmlabError if files are missing or sizes disagree."""
    folder = Path(folder)
    meta = read_meta(folder)
    dtype = np.dtype(meta["dtype"])
    arrays = {}
    for split in ("train", "val"):
        path = folder / f"{split}.bin"
        want = int(meta["splits"][split]["tokens"])
        if not path.is_file() or path.stat().st_size != want * dtype.itemsize:
            raise LmlabError(f"{path} is missing or truncated (meta.json says {want} tokens); "
                             "re-run 'lmlab data prepare' with --overwrite")
        arrays[split] = _memmap(path, dtype, want)
    masks = None
    if meta.get("loss_mask"):
        masks = {}
        for split in ("train", "val"):
            path = folder / f"{split}.mask.bin"
            want = len(arrays[split])
            if not path.is_file() or path.stat().st_size != want:
                raise LmlabError(f"{path} is missing or truncated (meta.json says {want} tokens); "
                                 "write the data again with --overwrite")
            masks[split] = _memmap(path, np.dtype(np.uint8), want)
    example_len = meta.get("example_len")
    if example_len is not None:
        for split in ("train", "val"):
            if int(example_len) < 2 or len(arrays[split]) % int(example_len):
                raise LmlabError(f"{folder}: the {split} split ({len(arrays[split])} tokens) is not a whole "
                                 f"number of examples of {example_len} tokens; write the data again")
    return PreparedData(folder, meta, arrays["train"], arrays["val"], masks)


def _memmap(path: Path, dtype: np.dtype, n: int) -> np.ndarray:
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype=dtype)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _chunks(docs: Iterator[str], max_chars: int) -> Iterator[list[str]]:
    batch, size = [], 0
    for d in docs:
        batch.append(d)
        size += len(d)
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def document_separator(tokenizer: Tokenizer) -> int:
    """Return the id written after each document: ``<|endoftext|>``, else the separator of a BERT
    (``[SEP]``) or RoBERTa (``</s>``) tokenizer; raise LmlabError when the tokenizer has none."""
    if tokenizer.eot_id is not None:
        return tokenizer.eot_id
    sep = special_token(tokenizer, "sep")
    if sep is None:
        raise LmlabError(f"the tokenizer has no token to separate documents (<|endoftext|> or "
                         f"{' or '.join(ROLE_NAMES['sep'])}); add one to it or let prepare train a tokenizer")
    return sep[1]


def encode_split(tokenizer: Tokenizer, docs: Iterator[str], path: Path, dtype: np.dtype,
                 desc: str) -> dict[str, int]:
    """Encode documents to ``path`` (ids + end-of-text after each); return the split's counts.

    Batches of documents are encoded in parallel by the tokenizers library's worker threads.
    """
    eot = document_separator(tokenizer)
    tokens = nbytes = ndocs = 0
    with open(path, "wb") as f, progress(desc=desc, unit="B", unit_scale=True) as bar:
        for batch in _chunks(docs, CHUNK_CHARS):
            for ids in tokenizer.encode_batch(batch):
                arr = np.asarray(ids + [eot], dtype=dtype)
                arr.tofile(f)
                tokens += len(arr)
            size = sum(len(d.encode("utf-8")) for d in batch)
            nbytes += size
            ndocs += len(batch)
            bar.update(size)
    return {"tokens": tokens, "bytes": nbytes, "documents": ndocs}


def fingerprint(corpus: Corpus, settings: dict[str, Any], tokenizer_file: Path | None) -> str:
    """Hash of everything the prepared data depends on."""
    parts = [FORMAT, corpus.fingerprint(), settings]
    if tokenizer_file is not None:
        parts.append(hashlib.sha256(tokenizer_file.read_bytes()).hexdigest())
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def check_out_dir(out: Path, fp: str, overwrite: bool) -> bool:
    """Decide what to do with an existing ``out``: True means reuse it as it is.

    Raises LmlabError if it holds other files, or different prepared data without
    ``overwrite``.
    """
    if not out.exists():
        return False
    if not out.is_dir():
        raise LmlabError(f"output {out} is a file; give --out a new or empty folder")
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return False
    foreign = entries - set(FILES) - set(MASK_FILES) - {"config.yaml"}
    if foreign or "meta.json" not in entries:
        raise LmlabError(f"output folder {out} already holds other files ({', '.join(sorted(entries)[:3])}"
                         f"{', ...' if len(entries) > 3 else ''}); choose a new or empty folder")
    try:
        meta = read_meta(out)
        load_prepared(out)
    except LmlabError:
        if overwrite:
            return False
        raise
    if meta.get("fingerprint") == fp:
        return True
    if not overwrite:
        raise LmlabError(f"{out} holds data prepared from other inputs or settings; "
                         "use --overwrite to replace it, or a new --out folder")
    return False


def prepare(corpus_spec: str, out: Path, kind: str = "bpe", vocab_size: int = 4096,
            val_fraction: float = 0.1, min_frequency: int = 2, tokenizer_file: Path | None = None,
            overwrite: bool = False, extra_files: dict[str, str] | None = None,
            mask_tokens: bool = False) -> tuple[dict[str, Any], bool]:
    """Prepare ``corpus_spec`` into ``out``; return ``(meta, reused)``.

    ``tokenizer_file`` reuses an existing tokenizer instead of training one.
    ``mask_tokens`` appends the special tokens of the pretraining objectives that the
    tokenizer lacks (see :func:`lmlab.data.special.add_objective_tokens`) at the end of its
    vocabulary, so every id it had keeps its meaning.
    ``extra_files`` (name -> text) are written into the folder too (e.g. config.yaml).
    """
    if tokenizer_file is not None:
        tokenizer_file = _tokenizer_path(Path(tokenizer_file))
    corpus = get_corpus(corpus_spec)
    settings = {"tokenizer": kind, "vocab_size": vocab_size, "val_fraction": val_fraction,
                "min_frequency": min_frequency}
    if mask_tokens:  # only when on, so the fingerprints of data prepared without it stay the same
        settings["mask_tokens"] = True
    fp = fingerprint(corpus, settings, tokenizer_file)
    if check_out_dir(out, fp, overwrite):
        return read_meta(out), True

    t0 = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        if tokenizer_file is not None:
            tokenizer = load_tokenizer(tokenizer_file)
        else:
            tokenizer = train_tokenizer(kind, corpus.documents("train", val_fraction), vocab_size,
                                        min_frequency)
        if mask_tokens:
            add_objective_tokens(tokenizer)
        tokenizer.save(tmp / "tokenizer.json")
        dtype = token_dtype(tokenizer.vocab_size)
        splits = {}
        for split in ("train", "val"):
            splits[split] = encode_split(tokenizer, corpus.documents(split, val_fraction),
                                         tmp / f"{split}.bin", dtype, f"encode {split}")
        if splits["train"]["documents"] == 0:
            raise LmlabError(f"corpus {corpus_spec!r} has no text; give it a non-empty file or folder")
        if splits["val"]["documents"] == 0:
            raise LmlabError(f"corpus {corpus_spec!r} is too small for a validation split; "
                             "add text or raise --val-fraction")
        meta = {
            "format": FORMAT, "corpus": corpus.name, "tokenizer": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size, "dtype": dtype.name, "eot_id": document_separator(tokenizer),
            "val_fraction": val_fraction, "splits": splits,
            "invalid_utf8_replaced": corpus.stats.total, "fingerprint": fp,
            "seconds": round(time.time() - t0, 2),
        }
        write_json(tmp / "meta.json", meta)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta, False


@dataclass
class ExampleSplit:
    """One split of example data: the token ids of all its examples back to back, the loss mask
    (1 = training target) of each token, and the split's document and UTF-8 byte counts."""

    ids: np.ndarray
    mask: np.ndarray
    documents: int
    bytes: int


def write_examples(out: Path, tokenizer: Tokenizer, splits: dict[str, ExampleSplit], example_len: int,
                   corpus: str, fp: str, info: dict[str, Any] | None = None,
                   overwrite: bool = False) -> tuple[dict[str, Any], bool]:
    """Write example data (see the module docstring) into ``out``; return ``(meta, reused)``.

    ``splits`` holds ``train`` and ``val``, each a whole number of ``example_len``-token
    examples; ``fp`` fingerprints the inputs (an ``out`` holding data with the same one is
    reused as it is); ``info`` goes into meta.json as it is (e.g. the task's settings).
    """
    if check_out_dir(out, fp, overwrite):
        return read_meta(out), True
    for split in ("train", "val"):
        s = splits[split]
        if len(s.ids) == 0 or len(s.ids) % example_len or len(s.mask) != len(s.ids):
            raise LmlabError(f"the {split} split must be a non-empty whole number of examples of "
                             f"{example_len} tokens with one mask value per token (got {len(s.ids)} ids, "
                             f"{len(s.mask)} mask values)")
    t0 = time.time()
    dtype = token_dtype(tokenizer.vocab_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tokenizer.save(tmp / "tokenizer.json")
        counts = {}
        for split in ("train", "val"):
            s = splits[split]
            np.asarray(s.ids, dtype=dtype).tofile(tmp / f"{split}.bin")
            np.asarray(s.mask, dtype=np.uint8).tofile(tmp / f"{split}.mask.bin")
            counts[split] = {"tokens": len(s.ids), "bytes": int(s.bytes), "documents": int(s.documents)}
        meta = {
            "format": FORMAT, "corpus": corpus, "tokenizer": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size,
            "dtype": dtype.name, "eot_id": document_separator(tokenizer), "splits": counts,
            "example_len": example_len, "loss_mask": True, "fingerprint": fp, **(info or {}),
            "seconds": round(time.time() - t0, 2),
        }
        write_json(tmp / "meta.json", meta)
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta, False


def _tokenizer_path(path: Path) -> Path:
    """The tokenizer.json that ``--tokenizer-file`` names (a file, or a folder holding one)."""
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise LmlabError(f"--tokenizer-file {path} is a folder without a tokenizer.json; "
                             "give the path of a tokenizer.json file")
        return path / "tokenizer.json"
    if not path.is_file():
        raise LmlabError(f"--tokenizer-file {path} does not exist; give the path of a tokenizer.json "
                         "(e.g. one written by 'lmlab tokenizer train')")
    return path
