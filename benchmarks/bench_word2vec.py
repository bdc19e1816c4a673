"""lmlab word2vec against gensim on the Wikipedia slice: words/s, analogy accuracy, wordsim Spearman.

Both train on the same tokenised sentences (lmlab's ``wiki-slice`` corpus, lowercased
words) with the same hyperparameters and the same number of threads; both are
evaluated by lmlab's evaluator (equal to gensim's ``evaluate_word_analogies`` and
``evaluate_word_pairs``; tests/test_word2vec_eval.py checks that). Runs alternate
(gensim, lmlab, gensim, lmlab, ...) so that load from other processes hits both alike;
the table shows the median words/s (wall clock, and per CPU-second, which other processes
disturb less) and the mean quality over the seeds of the runs.

    python benchmarks/bench_word2vec.py --arch skipgram cbow --epochs 5 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def run_gensim(sentences, arch: str, args, seed: int) -> tuple[object, float, float]:
    """Train gensim's Word2Vec; return (its KeyedVectors, wall and CPU seconds of training)."""
    from gensim.models import Word2Vec

    model = Word2Vec(vector_size=args.dim, window=args.window, min_count=args.min_count,
                     sg=int(arch == "skipgram"), negative=args.negative, hs=0, sample=args.subsample,
                     alpha=args.lr, min_alpha=args.min_lr, workers=args.threads, seed=seed)
    model.build_vocab(sentences)
    t0, c0 = time.perf_counter(), time.process_time()
    model.train(sentences, total_examples=len(sentences), epochs=args.epochs)
    return model.wv, time.perf_counter() - t0, time.process_time() - c0


def run_lmlab(arch: str, args, vocab, corpus, seed: int):
    """Train lmlab's word2vec; return (WordVectors, TrainStats)."""
    from lmlab.word2vec.model import Word2Vec, Word2VecParams

    params = Word2VecParams(arch=arch, dim=args.dim, window=args.window, negative=args.negative,
                            min_count=args.min_count, epochs=args.epochs, subsample=args.subsample,
                            lr=args.lr, min_lr=args.min_lr, batch=args.batch, threads=args.threads, seed=seed,
                            compile={"auto": None, "on": True, "off": False}[args.compile])
    model = Word2Vec(vocab, params)
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
    ap.add_argument("--threads", type=int, default=1, help="gensim workers = lmlab threads")
    ap.add_argument("--batch", type=int, default=1024, help="lmlab examples per SGD step")
    ap.add_argument("--compile", choices=["on", "off", "auto"], default="on",
                    help="lmlab: fuse the SGD step with torch.compile")
    ap.add_argument("--repeat", type=int, default=1, help="alternating runs of each; median words/s")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from lmlab.word2vec.commands import corpus_sentences
    from lmlab.word2vec.model import build_vocab, encode_corpus
    from lmlab.word2vec.vectors import WordVectors

    sentences = corpus_sentences(args.corpus)
    vocab, total = build_vocab(sentences, args.min_count)
    corpus = encode_corpus(sentences, vocab)
    print(f"{args.corpus}: {len(sentences):,} sentences, {total:,} words, vocab {len(vocab):,} "
          f"(min-count {args.min_count}); {args.threads} thread(s), {args.epochs} epochs", file=sys.stderr)
    rows = []
    for arch in args.arch:
        runs: dict[str, dict[str, list[float]]] = {"gensim": {}, "lmlab": {}}
        compile_s = 0.0
        for i in range(args.repeat):  # alternate, so that load from other processes hits both alike
            seed = args.seed + i
            kv, wall, cpu = run_gensim(sentences, arch, args, seed)
            _record(runs["gensim"], total * args.epochs, wall, cpu,
                    quality(WordVectors(list(kv.index_to_key), kv.vectors)))
            wv, stats = run_lmlab(arch, args, vocab, corpus, seed)
            _record(runs["lmlab"], total * args.epochs, stats.seconds, stats.cpu_seconds, quality(wv))
            compile_s = max(compile_s, stats.compile_seconds)
        row = {"arch": arch, "threads": args.threads, "epochs": args.epochs,
               "lmlab_compile_seconds": compile_s}
        for who, r in runs.items():
            row[who] = {"words_per_s": statistics.median(r["words_per_s"]),
                        "words_per_cpu_s": statistics.median(r["words_per_cpu_s"]),
                        "analogy": statistics.mean(r["analogy"]), "spearman": statistics.mean(r["spearman"]),
                        "analogy_evaluated": r["analogy_evaluated"][-1], "runs": r}
        row["speed_ratio"] = row["lmlab"]["words_per_s"] / row["gensim"]["words_per_s"]
        row["cpu_speed_ratio"] = row["lmlab"]["words_per_cpu_s"] / row["gensim"]["words_per_cpu_s"]
        rows.append(row)
    if args.json:
        print(json.dumps({"corpus": args.corpus, "words": total, "vocab": len(vocab), "runs": rows}))
        return 0
    print(f"{'arch':<9} {'':>7} {'words/s':>10} {'words/CPU-s':>12} {'analogy':>8} {'wordsim':>8}")
    for r in rows:
        for who in ("gensim", "lmlab"):
            q = r[who]
            print(f"{r['arch']:<9} {who:>7} {q['words_per_s']:>10,.0f} {q['words_per_cpu_s']:>12,.0f} "
                  f"{100 * q['analogy']:>7.2f}% {q['spearman']:>8.4f}")
        print(f"{r['arch']:<9} {'ratio':>7} {r['speed_ratio']:>10.2f} {r['cpu_speed_ratio']:>12.2f} "
              f"{r['lmlab']['analogy'] / max(r['gensim']['analogy'], 1e-9):>8.2f} "
              f"{r['lmlab']['spearman'] - r['gensim']['spearman']:>+8.4f}")
    print(f"(median words/s over {args.repeat} alternating run(s); quality is the mean over seeds "
          f"{args.seed}..{args.seed + args.repeat - 1}; analogies evaluated: "
          + ", ".join(f"{r['arch']} {r['gensim']['analogy_evaluated']}/{r['lmlab']['analogy_evaluated']}"
                      for r in rows)
          + (f"; lmlab compile time, not in words/s: {max(r['lmlab_compile_seconds'] for r in rows):.1f}s"
             if any(r["lmlab_compile_seconds"] > 0.01 for r in rows) else "") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
