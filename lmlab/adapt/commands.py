"""CLI commands of adaptation: the thin faces of lmlab.adapt's functions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmlab.config import arg, save_config
from lmlab.errors import LmlabError

# ------------------------------------------------------------------ lmlab transfer baseline


@dataclass
class TransferBaselineConfig:
    method: Literal["ngram-logreg", "w2v-avg", "elmo"] = arg(
        "ngram-logreg", "ngram-logreg (bag of n-grams), w2v-avg (averaged word2vec vectors) or elmo (ELMo "
        "features), each with a logistic regression")
    data: str = arg("sentiment-movies", "labelled corpus: sentiment-movies|amazon|nyt|tweets, a .jsonl/.csv "
                                        "file (text,label) or hf:NAME")
    eval_on: list[str] = arg([], "also score on the test split of these labelled corpora, without training "
                                 "on them (domain transfer), e.g. sentiment-amazon,sentiment-nyt")
    ngram: int = arg(2, "ngram-logreg: longest n-gram (1: unigrams)")
    min_df: int = arg(2, "ngram-logreg: keep n-grams found in at least this many training texts")
    vectors: Path | None = arg(None, "w2v-avg: word vectors in word2vec text format (e.g. from 'lmlab "
                                     "word2vec train'); default: train them here on the corpus's train text")
    dim: int = arg(100, "w2v-avg: vector size when training them here")
    epochs: int = arg(5, "w2v-avg: word2vec passes when training them here")
    min_count: int = arg(2, "w2v-avg: drop words seen fewer times when training them here")
    seed: int = arg(0, "w2v-avg: seed of the word2vec training")
    ckpt: Path | None = arg(None, "elmo: an ELMo run folder ('lmlab pretrain --model elmo-...')")
    out: Path | None = arg(None, "write OUT/config.yaml and OUT/result.json here")
    json: bool = arg(False, "print the figures as one JSON object")


def transfer_baseline(cfg: TransferBaselineConfig) -> int:
    """Score a transfer-lineage baseline on a labelled corpus: a logistic regression on bag-of-n-gram,
    averaged word2vec or ELMo features, its L2 strength picked on validation; prints held-out (test)
    accuracy and macro-F1, and with --eval-on the same on other corpora (domain transfer).

      lmlab transfer baseline --method ngram-logreg --data sentiment-movies
      lmlab transfer baseline --method w2v-avg --data sentiment-movies --eval-on sentiment-amazon
      lmlab data prepare --corpus sentiment-movies --tokenizer char --out data/movies
      lmlab pretrain --model elmo-tiny --data data/movies --out runs/elmo --max-steps 500
      lmlab transfer baseline --method elmo --ckpt runs/elmo --data sentiment-movies --json
    """
    from lmlab.adapt import transfer
    from lmlab.data.labelled import get_labelled

    if cfg.method == "elmo" and cfg.ckpt is None:
        raise LmlabError("--method elmo needs --ckpt ELMO_RUN (a run of 'lmlab pretrain --model elmo-...')")
    if cfg.method != "elmo" and cfg.ckpt is not None:
        raise LmlabError(f"--ckpt is for --method elmo; {cfg.method} does not read a run, drop --ckpt")
    if cfg.method != "w2v-avg" and cfg.vectors is not None:
        raise LmlabError(f"--vectors is for --method w2v-avg; drop it for {cfg.method}")
    corpus = get_labelled(cfg.data)
    others = [get_labelled(name) for name in cfg.eval_on]
    if cfg.method == "ngram-logreg":
        result = transfer.ngram_logreg(corpus, n=cfg.ngram, min_df=cfg.min_df, eval_on=others)
    elif cfg.method == "w2v-avg":
        vectors = None
        if cfg.vectors is not None:
            from lmlab.word2vec.vectors import load_word2vec_text

            vectors = load_word2vec_text(cfg.vectors)
        result = transfer.w2v_avg(corpus, vectors, dim=cfg.dim, epochs=cfg.epochs, min_count=cfg.min_count,
                                  seed=cfg.seed, eval_on=others)
    else:
        result = transfer.elmo_logreg(corpus, cfg.ckpt, eval_on=others)
    summary = result.summary()
    if cfg.out is not None:
        from lmlab.fileio import write_text

        cfg.out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, cfg.out / "config.yaml")
        write_text(cfg.out / "result.json", json.dumps(summary, indent=2) + "\n")
    if cfg.json:
        print(json.dumps(summary))
        return 0
    print(f"{result.method} on {result.data}: test accuracy {result.accuracy:.4f}, macro-F1 "
          f"{result.macro_f1:.4f} ({result.n_test} examples; validation accuracy {result.val_accuracy:.4f} "
          f"picked L2 {result.l2:g}; {result.n_features:,} features, {result.n_train} training examples, "
          f"{result.seconds:.1f}s)")
    for name, m in result.transfer.items():
        if m.get("n"):
            print(f"  transfer to {name}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} "
                  f"({m['n']} test examples)")
    return 0
