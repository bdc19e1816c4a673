"""CLI commands: ``lmlab word2vec train``, ``word2vec eval`` and ``word2vec neighbors``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lmlab.config import arg, save_config
from lmlab.errors import LmlabError

if TYPE_CHECKING:
    from lmlab.word2vec.model import Word2VecParams

def read_sentences(path: str | Path, lowercase: bool = False) -> list[list[str]]:
    """Read a text file as sentences: one per line, tokens split on whitespace (empty lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"text file {path} does not exist; check --text")
    with open(path, encoding="utf-8", errors="replace") as f:
        return [toks for line in f if (toks := (line.lower() if lowercase else line).split())]


def corpus_sentences(name: str, lowercase: bool = True) -> list[list[str]]:
    """Read a named corpus (see ``lmlab corpora``; both splits) as sentences: one per line of its
    documents, tokens are runs of letters and digits (with inner apostrophes)."""
    from lmlab.data.corpora import get_corpus
    from lmlab.word2vec.vectors import split_words

    corpus = get_corpus(name)
    sentences = []
    for split in ("train", "val"):
        for doc in corpus.documents(split):
            for line in doc.splitlines():
                toks = split_words(line, lowercase)
                if toks:
                    sentences.append(toks)
    return sentences


@dataclass
class TrainConfig:
    text: Path | None = arg(None, "training text: one sentence per line, tokens separated by whitespace")
    corpus: str | None = arg(None, "or a named corpus (e.g. wiki-slice, shakespeare; see 'lmlab corpora'), "
                                   "split into words by letters and digits")
    out: Path = arg(Path("vectors.txt"), "where to write the vectors (word2vec text format)")
    lowercase: bool = arg(False, "lowercase the text first (named corpora are always lowercased)")
    arch: Literal["skipgram", "cbow"] = arg("skipgram", "skip-gram or CBOW")
    loss: Literal["ns", "nce"] = arg("ns", "negative sampling or noise-contrastive estimation")
    dim: int = arg(100, "vector dimension")
    window: int = arg(5, "maximum distance between centre and context word")
    negative: int = arg(5, "noise words per example")
    min_count: int = arg(5, "drop words seen fewer times than this")
    epochs: int = arg(5, "passes over the corpus")
    subsample: float = arg(1e-3, "frequent-word subsampling threshold (0 turns it off)")
    lr: float = arg(0.025, "initial learning rate (decays linearly to --min-lr)")
    min_lr: float = arg(1e-4, "final learning rate")
    cbow_mean: bool = arg(True, "CBOW: average the context vectors (else sum them)")
    batch: int = arg(1024, "examples per SGD step (skip-gram pairs or CBOW centre words; at most 2 x vocab)")
    threads: int = arg(0, "worker threads updating the vectors concurrently (Hogwild); 0: one per CPU core "
                          "when the step is compiled, else 1 (results then vary run to run, as gensim's "
                          "with several workers; --threads 1 repeats exactly)")
    compile: Literal["auto", "on", "off"] = arg("auto", "fuse each SGD step with torch.compile (needs a C++ "
                                                "compiler; ~5 s to compile, 20-25 s the first time, then "
                                                "2-4x faster); auto: from 1M words x epochs on (CBOW 2M); "
                                                "if compiling fails, a notice and the plain step")
    seed: int = arg(1, "random seed")
    json: bool = arg(False, "print the training summary as JSON")


def train_params(cfg: TrainConfig) -> Word2VecParams:
    """Return the training hyperparameters that ``cfg`` (the ``word2vec train`` flags) asks for."""
    from lmlab.word2vec.model import Word2VecParams

    return Word2VecParams(arch=cfg.arch, dim=cfg.dim, window=cfg.window, negative=cfg.negative,
                          loss=cfg.loss, min_count=cfg.min_count, epochs=cfg.epochs,
                          subsample=cfg.subsample, lr=cfg.lr, min_lr=cfg.min_lr, cbow_mean=cfg.cbow_mean,
                          batch=cfg.batch, threads=cfg.threads, seed=cfg.seed,
                          compile={"auto": None, "on": True, "off": False}[cfg.compile])


def train(cfg: TrainConfig) -> None:
    """Train word2vec vectors (skip-gram or CBOW, negative sampling or NCE) and save them in
    word2vec text format; the resolved config goes to OUT.config.yaml.

    The input is a text file (--text: one sentence per line, whitespace-tokenised) or a
    named corpus (--corpus). Hyperparameters and defaults follow word2vec.c / gensim.
    """
    from lmlab.word2vec.model import Word2Vec, build_vocab, encode_corpus
    from lmlab.word2vec.vectors import save_word2vec_text

    if (cfg.text is None) == (cfg.corpus is None):
        raise LmlabError("give exactly one of --text FILE or --corpus NAME")
    params = train_params(cfg)
    params.check()
    if cfg.text is not None:
        sentences = read_sentences(cfg.text, cfg.lowercase)
    else:
        sentences = corpus_sentences(cfg.corpus, lowercase=True)
    vocab, total = build_vocab(sentences, cfg.min_count)
    corpus = encode_corpus(sentences, vocab)
    model = Word2Vec(vocab, params)
    stats = model.train(corpus, progress=not cfg.json)
    save_word2vec_text(cfg.out, model.word_vectors())
    save_config(cfg, Path(f"{cfg.out}.config.yaml"))
    summary = {"out": str(cfg.out), "vocab": len(vocab), "corpus_words": total, "dim": cfg.dim,
               "epochs": cfg.epochs, "words": stats.words, "effective_words": stats.effective_words,
               "examples": stats.examples, "loss": stats.loss, "seconds": stats.seconds,
               "compiled": stats.compiled, "compile_seconds": stats.compile_seconds, "threads": stats.threads,
               "words_per_s": stats.words_per_s}
    if cfg.json:
        print(json.dumps(summary))
        return
    compiled = f"compiled in {stats.compile_seconds:.1f}s" if stats.compiled else "not compiled"
    print(f"wrote {cfg.out}: {len(vocab):,} words x {cfg.dim} ({cfg.arch}, {cfg.loss}); "
          f"{stats.words:,} words in {stats.seconds:.1f}s = {stats.words_per_s:,.0f} words/s, "
          f"loss {stats.loss:.4f}; {stats.threads} thread(s), {compiled}")


@dataclass
class EvalConfig:
    vectors: Path = arg(Path("vectors.txt"), "vectors in word2vec text format")
    analogies: Path | None = arg(None, "analogy questions (default: gensim's questions-words.txt)")
    similarity: Path | None = arg(None, "word pairs with human scores (default: gensim's wordsim353.tsv)")
    restrict_vocab: int = arg(300000, "only the most frequent N words answer or are asked about (as gensim)")
    case_sensitive: bool = arg(False, "match words case-sensitively (default: upper-case both, as gensim)")
    json: bool = arg(False, "print the results as one JSON object")


def evaluate(cfg: EvalConfig) -> None:
    """Evaluate word vectors on word analogies (3CosAdd accuracy per section and in total) and on
    word similarity (Spearman and Pearson correlation with human scores), as gensim's
    evaluate_word_analogies and evaluate_word_pairs do. Out-of-vocabulary questions and
    pairs are skipped and counted.
    """
    from lmlab.word2vec.evaluate import (
        ANALOGIES_FILE,
        SIMILARITY_FILE,
        evaluate_analogies,
        evaluate_similarity,
        gensim_test_file,
    )
    from lmlab.word2vec.vectors import load_word2vec_text

    if cfg.restrict_vocab < 1:
        raise LmlabError("restrict-vocab must be at least 1")
    analogies = cfg.analogies or gensim_test_file(ANALOGIES_FILE)
    similarity = cfg.similarity or gensim_test_file(SIMILARITY_FILE)
    wv = load_word2vec_text(cfg.vectors)
    ci = not cfg.case_sensitive
    ana = evaluate_analogies(wv, analogies, cfg.restrict_vocab, ci)
    sim = evaluate_similarity(wv, similarity, cfg.restrict_vocab, ci)
    if cfg.json:
        print(json.dumps({"vectors": str(cfg.vectors), "words": len(wv), "dim": wv.dim,
                          "analogies": {"file": str(analogies), **ana.to_dict()},
                          "similarity": {"file": str(similarity), **sim.to_dict()}}))
        return
    print(f"{cfg.vectors}: {len(wv):,} words x {wv.dim}")
    print(f"analogies ({Path(analogies).name}): accuracy {100 * ana.accuracy:.2f}% "
          f"({ana.correct}/{ana.total}); {ana.oov} of {ana.questions} questions skipped as "
          f"out-of-vocabulary ({ana.oov_ratio:.1f}%)")
    for s in ana.sections:
        if s.total:
            print(f"  {s.section:<28} {100 * s.accuracy:6.2f}%  ({s.correct}/{s.total})")
    print(f"similarity ({Path(similarity).name}): Spearman {sim.spearman:.4f}, Pearson {sim.pearson:.4f} "
          f"on {sim.pairs} pairs; {sim.oov} skipped as out-of-vocabulary ({sim.oov_ratio:.1f}%)")


@dataclass
class NeighborsConfig:
    vectors: Path = arg(Path("vectors.txt"), "vectors in word2vec text format")
    word: str | None = arg(None, "the query word")
    k: int = arg(10, "how many neighbours")
    json: bool = arg(False, "print the neighbours as JSON")


def neighbors(cfg: NeighborsConfig) -> None:
    """Print the k nearest neighbours of a word by cosine similarity."""
    from lmlab.word2vec.vectors import load_word2vec_text

    if not cfg.word:
        raise LmlabError("give the query word: lmlab word2vec neighbors --vectors V.txt --word WORD")
    wv = load_word2vec_text(cfg.vectors)
    result = wv.most_similar(cfg.word, cfg.k)
    if cfg.json:
        print(json.dumps({"word": cfg.word, "neighbors": [{"word": w, "cosine": c} for w, c in result]},
                         ensure_ascii=False))
        return
    for w, c in result:
        print(f"{c:.4f}  {w}")

