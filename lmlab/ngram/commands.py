"""CLI commands for n-gram models: ``lmlab ngram train``, ``ngram eval``, ``ngram generate``."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmlab.config import arg, save_config
from lmlab.errors import LmlabError

Smoothing = Literal["mle", "add-k", "good-turing", "katz", "witten-bell", "kn", "mkn"]


def _json_safe(obj):
    """Replace non-finite floats (and numpy scalars) so ``json.dumps`` writes standard JSON."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item"):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def _corpus(text: Path | None, data: Path | None, split: str = "train"):
    """Load the corpus named by --text or --data; return (Corpus or lines, prepared data or None)."""
    if (text is None) == (data is None):
        raise LmlabError("give exactly one of --text FILE (one sentence per line) or --data DIR "
                         "(prepared with 'lmlab data prepare')")
    if data is not None:
        from lmlab.data.prepare import load_prepared

        return None, load_prepared(data)
    from lmlab.ngram.model import read_lines

    return read_lines(text), None


@dataclass
class NgramTrainConfig:
    text: Path | None = arg(None, "training text: one sentence per line, words separated by spaces "
                                  "(what KenLM lmplz reads)")
    data: Path | None = arg(None, "prepared-data folder: train on train.bin token ids, the end-of-text id "
                                  "ending each sentence")
    order: int = arg(3, "n-gram order (1 = unigram)")
    smoothing: Smoothing = arg("mkn", "smoothing method")
    k: float = arg(1.0, "add-k: pseudo-count added to every count")
    katz_k: int = arg(5, "katz: Good-Turing discounts for counts up to this, larger counts kept")
    discount_fallback: bool = arg(False, "kn/mkn: use lmplz's fallback discounts (D1=0.5 D2=1 D3+=1.5) "
                                         "when the data cannot give them")
    out: Path | None = arg(None, "output ARPA file (the resolved config goes to OUT.config.yaml)")
    json: bool = arg(False, "print the summary as one JSON object")


def train(cfg: NgramTrainConfig) -> None:
    """Estimate an n-gram language model and write it as an ARPA file (loads in KenLM).

    Smoothing: mle, add-k, good-turing (Simple Good-Turing discounts), katz (Good-Turing
    for counts <= --katz-k, Katz backoff), witten-bell, kn (interpolated Kneser-Ney), mkn
    (interpolated modified Kneser-Ney, as KenLM lmplz estimates it). Each line of --text is
    a sentence scored from <s> to </s>; with --data, token ids are the words and the
    end-of-text id ends a sentence.
    """
    from lmlab.console import progress
    from lmlab.ngram.arpa import write_arpa
    from lmlab.ngram.model import corpus_from_ids, corpus_from_lines, train_ngram

    if cfg.out is None:
        raise LmlabError("--out is required: the ARPA file to write, e.g. --out runs/ngram/mkn3.arpa")
    if cfg.order < 1:
        raise LmlabError(f"--order must be at least 1 (got {cfg.order}); use e.g. --order 3")
    lines, prepared = _corpus(cfg.text, cfg.data)
    t0 = time.perf_counter()
    if prepared is not None:
        corpus = corpus_from_ids(prepared.train, prepared.eot_id)
    else:
        corpus = corpus_from_lines(lines)
    if corpus.skipped_specials:
        print(f"warning: dropped {corpus.skipped_specials} occurrences of <s>, </s> or <unk> in the text "
              "(treated as spaces, as lmplz --skip_symbols does)", file=sys.stderr)
    with progress(total=cfg.order, desc="counting n-grams", unit="order") as bar:
        model = train_ngram(corpus, cfg.order, cfg.smoothing, k=cfg.k, katz_k=cfg.katz_k,
                            discount_fallback=cfg.discount_fallback, bar=bar)
    seconds = time.perf_counter() - t0
    with progress(total=sum(model.ngram_counts()), desc="writing ARPA", unit="ngram", unit_scale=True) as bar:
        write_arpa(model, cfg.out, bar=bar)
    save_config(cfg, Path(f"{cfg.out}.config.yaml"))
    summary = {
        "out": str(cfg.out), "order": cfg.order, "smoothing": cfg.smoothing,
        "words": corpus.words, "sentences": corpus.sentences, "vocab": model.V - 1,
        "ngrams": model.ngram_counts(), "discounts": model.info["orders"], "seconds": round(seconds, 3),
    }
    if cfg.json:
        print(json.dumps(_json_safe(summary)))
        return
    print(f"trained a {cfg.order}-gram {cfg.smoothing} model on {corpus.words:,} words "
          f"({corpus.sentences:,} sentences, vocabulary {model.V - 1:,} incl. </s> and <unk>) "
          f"in {seconds:.2f} s")
    for i, (n, facts) in enumerate(zip(model.ngram_counts(), model.info["orders"]), 1):
        shown = "  ".join(f"{k}={_show(v)}" for k, v in facts.items())
        print(f"  {i}-grams {n:>12,}  {shown}")
    print(f"wrote {cfg.out} and {cfg.out}.config.yaml")


def _show(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {float(x):.4g}" for k, x in v.items()) + "}"
    return f"{v:.6g}" if isinstance(v, float) else str(v)


@dataclass
class NgramEvalConfig:
    model: Path | None = arg(None, "ARPA model file (from 'lmlab ngram train' or KenLM lmplz)")
    text: Path | None = arg(None, "text to score: one sentence per line, words separated by spaces")
    data: Path | None = arg(None, "prepared-data folder to score instead of --text (its --split)")
    split: Literal["val", "train"] = arg("val", "with --data: which split to score")
    json: bool = arg(False, "print the figures as one JSON object")


def evaluate(cfg: NgramEvalConfig) -> None:
    """Perplexity, OOVs and bits per byte of an ARPA n-gram model on a text, scored as KenLM
    does: each line from <s>, </s> counted as a token, unknown words scored as <unk> and
    included. Also prints perplexity without OOVs, and bits per byte (total nats / ln 2 /
    UTF-8 bytes of the text, a newline counted per line; with --data, the split's bytes).
    """
    import numpy as np

    from lmlab.console import progress
    from lmlab.ngram.arpa import read_arpa
    from lmlab.ngram.model import score_token_ids

    if cfg.model is None:
        raise LmlabError("--model is required: an ARPA file from 'lmlab ngram train'")
    lines, prepared = _corpus(cfg.text, cfg.data)
    with progress(desc="reading ARPA", unit="ngram", unit_scale=True) as bar:
        model = read_arpa(cfg.model, bar=bar)
    if prepared is not None:
        ids = np.asarray(getattr(prepared, cfg.split)).astype(np.int64)
        if len(ids) == 0:
            raise LmlabError(f"the {cfg.split} split of {cfg.data} is empty; "
                             "prepare data with a validation split")
        scores = score_token_ids(model, ids, prepared.eot_id)
        n_bytes = int(prepared.meta["splits"][cfg.split]["bytes"])
        source = f"{cfg.data} ({cfg.split})"
    else:
        if not lines:
            raise LmlabError(f"{cfg.text} is empty; give a text with one sentence per line")
        scores = model.score_lines(lines)
        n_bytes = sum(len(line.encode("utf-8")) + 1 for line in lines)
        source = str(cfg.text)
    words = scores.tokens - scores.sentences if prepared is None else int((ids != prepared.eot_id).sum())
    if words > 0 and scores.oov.sum() == words:
        raise LmlabError(f"every one of the {words} words of {source} is unknown to the model; "
                         "score text in the same language and tokenization as the training text")
    result = {"model": str(cfg.model), "text": source, "order": model.order, **scores.summary(n_bytes)}
    if cfg.json:
        print(json.dumps(_json_safe(result)))
        return
    print(f"{cfg.model} ({model.order}-gram) on {source}:")
    print(f"  perplexity            {result['perplexity']:.4f}   (including {result['oovs']:,} OOVs)")
    print(f"  perplexity excl. OOV  {result['perplexity_excl_oov']:.4f}")
    print(f"  bits per byte         {result['bits_per_byte']:.4f}   ({n_bytes:,} bytes)")
    print(f"  tokens                {result['tokens']:,}   ({result['sentences']:,} sentences, </s> counted)")
    print(f"  log10 probability     {result['logprob10']:.2f}")
    if result["zero_prob_tokens"]:
        print(f"  zero-probability      {result['zero_prob_tokens']:,} tokens (the model is not smoothed)")


@dataclass
class NgramGenerateConfig:
    model: Path | None = arg(None, "ARPA model file")
    max_words: int = arg(50, "number of words to sample")
    seed: int = arg(0, "random seed")
    tokenizer: Path | None = arg(None, "tokenizer.json or prepared-data folder, to decode a model trained "
                                       "with --data (its words are token ids)")


def generate(cfg: NgramGenerateConfig) -> None:
    """Sample text from an ARPA n-gram model, word by word from its backoff distribution;
    each sentence (ended by </s>) is printed on its own line."""
    from lmlab.console import progress
    from lmlab.ngram.arpa import read_arpa

    if cfg.model is None:
        raise LmlabError("--model is required: an ARPA file from 'lmlab ngram train'")
    if cfg.max_words < 1:
        raise LmlabError(f"--max-words must be at least 1 (got {cfg.max_words})")
    with progress(desc="reading ARPA", unit="ngram", unit_scale=True) as bar:
        model = read_arpa(cfg.model, bar=bar)
    sentences = model.generate(cfg.max_words, seed=cfg.seed)
    if cfg.tokenizer is None:
        for s in sentences:
            print(" ".join(s))
        return
    from lmlab.data.tokenizers import load_tokenizer

    tok = load_tokenizer(cfg.tokenizer)
    for s in sentences:
        if not all(w.isdigit() for w in s):
            raise LmlabError(f"{cfg.model} has words that are not token ids; drop --tokenizer for a model "
                             "trained with --text")
        print(tok.decode([int(w) for w in s]))
