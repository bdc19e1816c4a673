"""lmlab word2vec against gensim on the Wikipedia slice: words/s, analogy accuracy, wordsim Spearman.

Both train on the same tokenised sentences (lmlab's ``wiki-slice`` corpus, lowercased
words) with the same hyperparameters; both are evaluated by lmlab's evaluator (equal to
gensim's ``evaluate_word_analogies`` and ``evaluate_word_pairs``; tests/word2vec/test_word2vec_eval.py
checks that). lmlab runs with the flags ``lmlab word2vec train`` uses by default (``default``:
compile and threads chosen automatically; ``--threads`` sets them) and, when they resolve
differently, with ``--tuned`` flags. gensim gets as many workers as lmlab's default runs
threads. Runs are interleaved (gensim, lmlab default, lmlab tuned, gensim, ...) so that load
from other processes hits all alike; the table shows the median words/s over the rounds with
its min-max spread (wall clock, and per CPU-second, which other processes disturb less), the
ratio of medians with the spread of the per-round ratios, and the mean quality over the rounds'
seeds. words/s leaves out the one-time compile (printed apart).

    python benchmarks/bench_word2vec.py --arch skipgram cbow --epochs 5 --repeat 3
    python benchmarks/bench_word2vec.py --arch cbow --tuned threads=1   # default beside 1 thread
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time


def run_gensim(sentences, arch: str, args, workers: int, seed: int) -> tuple[object, float, float]:
    """Train gensim's Word2Vec; return (its KeyedVectors, wall and CPU seconds of training)."""
    from gensim.models import Word2Vec

    model = Word2Vec(vector_size=args.dim, window=args.window, min_count=args.min_count,
                     sg=int(arch == "skipgram"), negative=args.negative, hs=0, sample=args.subsample,
                     alpha=args.lr, min_alpha=args.min_lr, workers=workers, seed=seed)
    model.build_vocab(sentences)
    t0, c0 = time.perf_counter(), time.process_time()
    model.train(sentences, total_examples=len(sentences), epochs=args.epochs)
    return model.wv, time.perf_counter() - t0, time.process_time() - c0


def lmlab_params(arch: str, args, overrides: dict[str, str]):
    """Word2VecParams of ``lmlab word2vec train`` with the benchmark's hyperparameters and its default
    flags, or the flags in ``overrides`` (CLI names, e.g. ``{"compile": "on", "threads": "2"}``)."""
    from lmlab.word2vec.commands import TrainConfig, train_params

    cfg = TrainConfig(arch=arch, dim=args.dim, window=args.window, negative=args.negative,
                      min_count=args.min_count, epochs=args.epochs, subsample=args.subsample, lr=args.lr,
                      min_lr=args.min_lr)
    for key, value in overrides.items():
        kind = type(getattr(cfg, key))
        setattr(cfg, key, value if kind is str else kind(value))
    return train_params(cfg)


def resolved(params, words: int) -> tuple[bool, int]:
    """(compiled, threads) that training ``params`` on ``words`` words of work would choose."""
    from lmlab.word2vec.model import resolve_compile, resolve_threads

    compiled = resolve_compile(params, words)
    return compiled, resolve_threads(params, compiled)


def run_lmlab(params, vocab, corpus, seed: int):
    """Train lmlab's word2vec; return (WordVectors, TrainStats)."""
    from lmlab.word2vec.model import Word2Vec

    model = Word2Vec(vocab, dataclasses.replace(params, seed=seed))
    stats = model.train(corpus, progress=False)
    return model.word_vectors(), stats


def quality(wv) -> dict:
    """Analogy accuracy (questions-words.txt) and wordsim353 Spearman of word vectors."""
    from lmlab.word2vec.evaluate import (
        ANALOGIES_FILE,
        SIMILARITY_FILE,
        evaluate_analogies,
        evaluate_similarity,
        gensim_test_file,
    )

    ana = evaluate_analogies(wv, gensim_test_file(ANALOGIES_FILE))
    sim = evaluate_similarity(wv, gensim_test_file(SIMILARITY_FILE))
    return {"analogy": ana.accuracy, "analogy_evaluated": ana.total, "spearman": sim.spearman}


def _record(runs: dict[str, list[float]], words: int, wall: float, cpu: float, q: dict) -> None:
    for key, value in {"words_per_s": words / wall, "words_per_cpu_s": words / cpu, **q}.items():
        runs.setdefault(key, []).append(value)


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _fmt(s: dict[str, float], width: int, ratio: bool = False) -> str:
    if ratio:
        return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})".rjust(width)
    return f"{s['median'] / 1e3:,.0f}K ({s['min'] / 1e3:,.0f}-{s['max'] / 1e3:,.0f})".rjust(width)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="wiki-slice")
    ap.add_argument("--arch", nargs="+", default=["skipgram", "cbow"], choices=["skipgram", "cbow"])
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--negative", type=int, default=5)
    ap.add_argument("--min-count", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--subsample", type=float, default=1e-3)
    ap.add_argument("--lr", type=float, default=0.025)
    ap.add_argument("--min-lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=0,
                    help="lmlab --threads in both configurations and gensim's workers (0: lmlab's default, "
                         "and as many gensim workers as lmlab's default runs threads)")
    ap.add_argument("--tuned", nargs="*", default=["compile=on"], metavar="FLAG=VALUE",
                    help="lmlab flags of the second configuration, e.g. compile=on threads=2 batch=2048 "
                         "(run only where it resolves differently from the defaults)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds; median and min-max words/s")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    tuned_flags = dict(f.split("=", 1) for f in args.tuned)
    flags = {"threads": str(args.threads)} if args.threads else {}

    from lmlab.word2vec.commands import corpus_sentences
    from lmlab.word2vec.model import build_vocab, encode_corpus
    from lmlab.word2vec.vectors import WordVectors

    sentences = corpus_sentences(args.corpus)
    vocab, total = build_vocab(sentences, args.min_count)
    corpus = encode_corpus(sentences, vocab)
    words = total * args.epochs
    print(f"{args.corpus}: {len(sentences):,} sentences, {total:,} words, vocab {len(vocab):,} "
          f"(min-count {args.min_count}); {args.epochs} epochs", file=sys.stderr)
    rows = []
    for arch in args.arch:
        default, tuned = lmlab_params(arch, args, flags), lmlab_params(arch, args, {**flags, **tuned_flags})
        configs = {"default": default}
        if (tuned.batch, *resolved(tuned, words)) != (default.batch, *resolved(default, words)):
            configs["tuned"] = tuned
        workers = resolved(configs["default"], words)[1]
        runs: dict[str, dict[str, list[float]]] = {"gensim": {}, **{name: {} for name in configs}}
        setup: dict[str, dict] = {"gensim": {"workers": workers}}
        for i in range(args.repeat):  # interleaved, so that load from other processes hits all alike
            seed = args.seed + i
            kv, wall, cpu = run_gensim(sentences, arch, args, workers, seed)
            _record(runs["gensim"], words, wall, cpu, quality(WordVectors(list(kv.index_to_key), kv.vectors)))
            for name, params in configs.items():
                wv, stats = run_lmlab(params, vocab, corpus, seed)
                _record(runs[name], words, stats.seconds, stats.cpu_seconds, quality(wv))
                s = setup.setdefault(name, {"compiled": stats.compiled, "threads": stats.threads,
                                            "batch": params.batch, "compile_seconds": 0.0})
                s["compile_seconds"] = max(s["compile_seconds"], stats.compile_seconds)
        row = {"arch": arch, "epochs": args.epochs, "words": words, "tuned_flags": tuned_flags}
        for who, r in runs.items():
            row[who] = {"setup": setup[who], "words_per_s": _spread(r["words_per_s"]),
                        "words_per_cpu_s": _spread(r["words_per_cpu_s"]),
                        "analogy": statistics.mean(r["analogy"]), "spearman": statistics.mean(r["spearman"]),
                        "analogy_evaluated": r["analogy_evaluated"][-1], "runs": r}
            if who != "gensim":
                for key in ("words_per_s", "words_per_cpu_s"):
                    paired = [a / b for a, b in zip(r[key], runs["gensim"][key])]
                    row[who][f"ratio_{key}"] = {**_spread(paired), "median": row[who][key]["median"]
                                                / row["gensim"][key]["median"]}
        rows.append(row)
    if args.json:
        print(json.dumps({"corpus": args.corpus, "words": total, "vocab": len(vocab), "runs": rows}))
        return 0
    print(f"{'arch':<9} {'':>8} {'words/s (min-max)':>22} {'words/CPU-s':>22} {'analogy':>8} {'wordsim':>8}"
          "  setup")
    for r in rows:
        for who in [k for k in ("gensim", "default", "tuned") if k in r]:
            q = r[who]
            s = q["setup"]
            how = (f"{s['workers']} workers" if who == "gensim" else
                   f"{s['threads']} thread(s), {'compiled' if s['compiled'] else 'not compiled'}"
                   + (f" in {s['compile_seconds']:.1f}s" if s["compiled"] else "")
                   + ("; " + " ".join(f"--{k} {v}" for k, v in r["tuned_flags"].items())
                      if who == "tuned" else ""))
            print(f"{r['arch']:<9} {who:>8} {_fmt(q['words_per_s'], 22)} {_fmt(q['words_per_cpu_s'], 22)} "
                  f"{100 * q['analogy']:>7.2f}% {q['spearman']:>8.4f}  {how}")
            if who != "gensim":
                print(f"{r['arch']:<9} {'ratio':>8} {_fmt(q['ratio_words_per_s'], 22, True)} "
                      f"{_fmt(q['ratio_words_per_cpu_s'], 22, True)} "
                      f"{q['analogy'] / max(r['gensim']['analogy'], 1e-9):>8.2f} "
                      f"{q['spearman'] - r['gensim']['spearman']:>+8.4f}  {who} / gensim")
    print(f"(median over {args.repeat} interleaved round(s), min-max in brackets; a ratio is of the medians, "
          f"its brackets the spread of the per-round ratios; quality is the mean over seeds "
          f"{args.seed}..{args.seed + args.repeat - 1}; analogies evaluated: "
          + ", ".join(f"{r['arch']} {r['gensim']['analogy_evaluated']}/{r['default']['analogy_evaluated']}"
                      for r in rows)
          + "; compile time is not in words/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
