"""CLI commands for corpora, tokenizers and prepared data."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmlab.config import arg, to_yaml
from lmlab.errors import LmlabError

TokenizerKind = Literal["bpe", "char", "byte", "word"]


@dataclass
class CorporaConfig:
    json: bool = arg(False, "print the list as JSON")


def corpora(cfg: CorporaConfig) -> None:
    """List the built-in corpora and the other sources --corpus accepts."""
    from lmlab.data.corpora import BUILTIN

    other = {
        "PATH.txt": "a text file (split into train/val by its tail)",
        "FOLDER": "a folder of .txt/.md files (held-out split by file)",
        "PATH.jsonl": "JSON lines with a 'text' field (held-out split by record)",
        "hf:NAME[:CONFIG]": "a Hugging Face datasets dataset with a 'text' column (needs network)",
    }
    if cfg.json:
        print(json.dumps({"builtin": {k: v[1] for k, v in BUILTIN.items()}, "other": other}))
        return
    print("built-in corpora:")
    for name, (_, desc) in BUILTIN.items():
        print(f"  {name:<18}{desc}")
    print("\nor any of:")
    for name, desc in other.items():
        print(f"  {name:<18}{desc}")


@dataclass
class PrepareConfig:
    corpus: str = arg("shakespeare", "corpus name (see 'lmlab corpora'), a path, or hf:NAME")
    tokenizer: TokenizerKind = arg("bpe", "tokenizer kind to train")
    vocab_size: int = arg(4096, "vocabulary size incl. special tokens (bpe, word)")
    out: Path | None = arg(None, "output folder (default: runs/data/<corpus>-<tokenizer><vocab>[-masks])")
    val_fraction: float = arg(0.1, "share of documents held out for validation")
    min_frequency: int = arg(2, "minimum count of a merge (bpe) or word (word) to enter the vocab")
    tokenizer_file: Path | None = arg(None, "use this tokenizer.json (or a folder holding one) instead of "
                                          "training one")
    mask_tokens: bool = arg(False, "append the special tokens of the masked/denoising objectives the "
                                   "tokenizer lacks (a mask, cls/sep, pad, sop/eop, 100 T5 sentinels "
                                   "<extra_id_N>) at the end of its vocabulary; needed by lmlab pretrain "
                                   "--objective mlm, mlm+nsp, span-corruption, denoise, blank-infilling")
    overwrite: bool = arg(False, "replace prepared data made from other inputs in --out")
    json: bool = arg(False, "print the resulting meta as JSON")


def default_out(cfg: PrepareConfig) -> Path:
    """Default prepared-data folder for a config."""
    name = Path(cfg.corpus.rstrip("/")).stem.replace(":", "-") or "corpus"
    vocab = "" if cfg.tokenizer in ("char", "byte") else str(cfg.vocab_size)
    return Path("runs") / "data" / f"{name}-{cfg.tokenizer}{vocab}{'-masks' if cfg.mask_tokens else ''}"


def _summary(meta: dict, out: Path) -> str:
    lines = [f"prepared data in {out}",
             f"  corpus     {meta['corpus']}",
             f"  tokenizer  {meta['tokenizer']}, vocab {meta['vocab_size']}, ids as {meta['dtype']}"]
    for split in ("train", "val"):
        s = meta["splits"][split]
        lines.append(f"  {split:<10} {s['tokens']:>11,} tokens  {s['bytes']:>11,} bytes  "
                     f"{s['documents']:>6,} documents  ({s['bytes'] / max(1, s['tokens']):.2f} bytes/token)")
    if meta.get("example_len"):
        lines.append(f"  examples   {meta['example_len']} tokens each (one training window)"
                     f"{', loss mask' if meta.get('loss_mask') else ''}")
    if meta.get("invalid_utf8_replaced"):
        lines.append(f"  note       {meta['invalid_utf8_replaced']} invalid UTF-8 sequences replaced")
    return "\n".join(lines)


def prepare(cfg: PrepareConfig) -> None:
    """Tokenize a corpus into OUT/train.bin and OUT/val.bin (flat token ids), with OUT/tokenizer.json
    and OUT/meta.json (token and UTF-8 byte counts per split, for bits per byte).

    With --mask-tokens the tokenizer also gets the special tokens of the masked and denoising
    objectives (appended after every other id, so existing ids keep their meaning).
    The validation split holds out whole documents (works, files or records). Running it
    again with the same inputs reuses the result; nothing is half-written on failure.
    """
    from lmlab.data.prepare import prepare as run_prepare

    out = cfg.out or default_out(cfg)
    cfg.out = out
    meta, reused = run_prepare(cfg.corpus, out, cfg.tokenizer, cfg.vocab_size, cfg.val_fraction,
                               cfg.min_frequency, cfg.tokenizer_file, cfg.overwrite,
                               extra_files={"config.yaml": to_yaml(cfg)}, mask_tokens=cfg.mask_tokens)
    if cfg.json:
        print(json.dumps({**meta, "out": str(out), "reused": reused}))
        return
    if reused:
        print(f"{out} is up to date with these inputs and settings; reusing it")
    else:
        print(f"prepared in {meta['seconds']:.1f}s")
    print(_summary(meta, out))


@dataclass
class InfoConfig:
    dir: Path | None = arg(None, "prepared-data folder", positional=True)
    sample_tokens: int = arg(120, "how many validation tokens to decode as a sample")
    json: bool = arg(False, "print the meta (and sample) as JSON")


def info(cfg: InfoConfig) -> None:
    """Print the meta of a prepared-data folder and a decoded sample of its validation split."""
    from lmlab.data.prepare import load_prepared

    if cfg.dir is None:
        raise LmlabError("give the prepared-data folder: lmlab data info DIR")
    data = load_prepared(cfg.dir)
    tok = data.tokenizer()
    sample = tok.decode(data.val[: cfg.sample_tokens].tolist())
    if cfg.json:
        print(json.dumps({**data.meta, "sample": sample}))
        return
    print(_summary(data.meta, cfg.dir))
    print(f"\nsample ({min(cfg.sample_tokens, len(data.val))} validation tokens, decoded):")
    print("  " + sample.replace("\n", "\n  "))


@dataclass
class TokenizerTrainConfig:
    corpus: str = arg("shakespeare", "corpus name, path, or hf:NAME (its train split is used)")
    kind: TokenizerKind = arg("bpe", "tokenizer kind")
    vocab_size: int = arg(4096, "vocabulary size incl. special tokens (bpe, word)")
    min_frequency: int = arg(2, "minimum count of a merge (bpe) or word (word)")
    val_fraction: float = arg(0.1, "share of documents held out (not trained on)")
    out: Path = arg(Path("tokenizer.json"), "where to write tokenizer.json")


def tokenizer_train(cfg: TokenizerTrainConfig) -> None:
    """Train a tokenizer on a corpus's training split and save it as tokenizer.json
    (loadable by transformers.PreTrainedTokenizerFast(tokenizer_file=...))."""
    from lmlab.config import save_config
    from lmlab.data.corpora import get_corpus
    from lmlab.data.tokenizers import train_tokenizer

    corpus = get_corpus(cfg.corpus)
    tok = train_tokenizer(cfg.kind, corpus.documents("train", cfg.val_fraction), cfg.vocab_size,
                          cfg.min_frequency)
    tok.save(cfg.out)
    save_config(cfg, Path(f"{cfg.out}.config.yaml"))
    print(f"wrote {cfg.out}: {tok.kind} tokenizer, vocab {tok.vocab_size}")


@dataclass
class EncodeConfig:
    text: str | None = arg(None, "text to encode (or use --file, or '-' for stdin)", positional=True)
    tokenizer: Path = arg(Path("tokenizer.json"), "tokenizer.json or a folder holding one")
    file: Path | None = arg(None, "encode this file's text instead")
    json: bool = arg(False, "print ids and token strings as JSON")


def tokenizer_encode(cfg: EncodeConfig) -> None:
    """Encode text to token ids (space-separated on one line)."""
    from lmlab.data.corpora import decode_utf8
    from lmlab.data.tokenizers import load_tokenizer

    tok = load_tokenizer(cfg.tokenizer)
    if cfg.file is not None:
        if not cfg.file.is_file():
            raise LmlabError(f"no file {cfg.file}; check --file")
        text, _ = decode_utf8(cfg.file.read_bytes())
    elif cfg.text == "-":
        text = sys.stdin.read()
    elif cfg.text is not None:
        text = cfg.text
    else:
        raise LmlabError("give text to encode: lmlab tokenizer encode 'some text' (or --file F)")
    ids = tok.encode(text)
    if cfg.json:
        print(json.dumps({"ids": ids, "tokens": [tok.id_to_token(i) for i in ids]}, ensure_ascii=False))
    else:
        print(" ".join(map(str, ids)))


@dataclass
class DecodeConfig:
    ids: str | None = arg(None, "token ids separated by spaces or commas ('-' for stdin)", positional=True)
    tokenizer: Path = arg(Path("tokenizer.json"), "tokenizer.json or a folder holding one")


def tokenizer_decode(cfg: DecodeConfig) -> None:
    """Decode token ids back to text."""
    from lmlab.data.tokenizers import load_tokenizer

    tok = load_tokenizer(cfg.tokenizer)
    raw = sys.stdin.read() if cfg.ids == "-" else cfg.ids
    if not raw:
        raise LmlabError("give token ids to decode: lmlab tokenizer decode '12 7 99'")
    try:
        ids = [int(x) for x in raw.replace(",", " ").split()]
    except ValueError:
        raise LmlabError(f"token ids must be integers, got {raw[:40]!r}") from None
    bad = [i for i in ids if not 0 <= i < tok.vocab_size]
    if bad:
        raise LmlabError(f"id {bad[0]} is outside the vocabulary (0..{tok.vocab_size - 1})")
    sys.stdout.write(tok.decode(ids) + "\n")


@dataclass
class InstructionsConfig:
    out: Path | None = arg(None, "output folder: train.jsonl, validation.jsonl, test.jsonl, meta.json, "
                                        "config.yaml")
    tasks: list[str] = arg(["sentiment", "speaker", "play", "arithmetic"], "which tasks to ask")
    per_task: int = arg(3000, "at most this many questions per task (before the split)")
    seed: int = arg(0, "seed of which questions are drawn, their wording and their order")
    sentiment: str = arg("sentiment-movies", "the labelled corpus the sentiment questions are about")
    shakespeare: str = arg("shakespeare", "the plays: 'shakespeare' (the built-in corpus) or a folder "
                                                  "of .txt plays")
    max_add: int = arg(99, "additions use operands 0..this")
    max_factor: int = arg(12, "multiplications use factors 0..this")
    max_words: int = arg(60, "leave out snippets and speeches longer than this many words (a small model's "
                             "context must hold the question)")
    json: bool = arg(False, "print the counts as JSON")


def instructions(cfg: InstructionsConfig) -> None:
    """Write an instruction set made by code from real data, as conversations ({"messages": [user,
    assistant], "task", "answer"} per line) for 'lmlab sft': sentiment questions over review snippets
    (answered from the human ratings), speaker and play questions over Shakespeare's plays, and
    arithmetic. Splits train/validation/test; no held-out question is about a text in train. E.g.:

      lmlab data instructions --out runs/data/instructions --per-task 2000
      lmlab sft --ckpt runs/llama --data runs/data/instructions/train.jsonl --out runs/llama-sft
    """
    from lmlab.config import save_config
    from lmlab.data.instructions import build_instructions, write_instructions

    if cfg.out is None:
        raise LmlabError("give the output folder: lmlab data instructions --out DIR")
    data = build_instructions(cfg.tasks, cfg.per_task, cfg.seed, cfg.sentiment, cfg.shakespeare,
                              cfg.max_add, cfg.max_factor, cfg.max_words)
    meta = {"tasks": cfg.tasks, "seed": cfg.seed, "sentiment": cfg.sentiment, "shakespeare": cfg.shakespeare}
    write_instructions(cfg.out, data, meta)
    save_config(cfg, cfg.out / "config.yaml")
    if cfg.json:
        print(json.dumps({"out": str(cfg.out), "counts": data.counts, "dropped_leaks": data.dropped_leaks}))
        return
    print(f"wrote {cfg.out}:")
    for split, counts in data.counts.items():
        print(f"  {split:<11}{sum(counts.values()):>7,}  " + ", ".join(f"{t} {n}" for t, n in counts.items()))
