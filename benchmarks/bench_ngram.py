"""N-gram models against KenLM on Shakespeare: build time, discounts, perplexity.

Trains our n-gram model (5-gram modified Kneser-Ney by default) on the Shakespeare
training works (lower-cased, words and punctuation split, one text line per sentence),
writes it as ARPA and scores the held-out works with our code and with the ``kenlm``
module reading our ARPA file. When a KenLM ``lmplz`` binary is found (``--lmplz`` or on
PATH) it also estimates the same model, and the script prints its discounts next to ours,
the largest difference over every n-gram's log10 probability and backoff, the build times
and the perplexities. ``--all`` adds a table of every smoothing at the same order.

    python benchmarks/bench_ngram.py [--order 5] [--smoothing mkn] [--lmplz PATH] [--all] [--json]

Building lmplz needs KenLM's sources: the ``kenlm`` sdist on PyPI holds them
(``pip download --no-deps --no-binary :all: kenlm``; cmake with Boost program_options,
system, thread and test; ``make lmplz``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lmlab.ngram.arpa import read_arpa, write_arpa
from lmlab.ngram.model import SMOOTHINGS, NgramModel, corpus_from_lines, read_lines, train_ngram

TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def shakespeare_sentences(split: str) -> list[str]:
    """Lines of the Shakespeare split, lower-cased and tokenized, empty lines dropped."""
    from lmlab.data.corpora import get_corpus

    out = []
    for doc in get_corpus("shakespeare").documents(split):
        for line in doc.split("\n"):
            words = TOKEN.findall(line.lower())
            if words:
                out.append(" ".join(words))
    return out


def kenlm_perplexity(arpa: Path, lines: list[str]) -> tuple[float, float]:
    """Perplexity of ``lines`` under the ARPA file as the kenlm module computes it; return
    (perplexity, seconds to load the file)."""
    import kenlm

    t = time.perf_counter()
    model = kenlm.Model(str(arpa))
    load = time.perf_counter() - t
    total = sum(model.score(line, bos=True, eos=True) for line in lines)
    tokens = sum(len(line.split()) + 1 for line in lines)
    return 10 ** (-total / tokens), load


def ngram_table(model: NgramModel) -> dict[str, tuple[float, float]]:
    """n-gram text -> (log10 p, log10 backoff) for every n-gram of the model."""
    V = model.V
    table: dict[str, tuple[float, float]] = {}
    texts: list[str] = []
    for k in range(1, model.order + 1):
        keys = model.keys[k - 1]
        if k == 1:
            texts = [model.vocab[i] for i in keys.tolist()]
        else:
            pairs = zip((keys // V).tolist(), (keys % V).tolist())
            texts = [f"{texts[c]} {model.vocab[w]}" for c, w in pairs]
        bo = model.backoff[k - 1] if k < model.order else np.zeros(len(keys))
        table.update(zip(texts, zip(model.logprob[k - 1].tolist(), bo.tolist())))
    return table


def run_lmplz(lmplz: str, order: int, train: Path, out: Path, tmp: Path) -> tuple[float, list[dict]]:
    """Estimate with KenLM lmplz; return (wall seconds, discounts per order parsed from its log)."""
    t = time.perf_counter()
    with open(train, "rb") as src, open(out, "wb") as dst:
        proc = subprocess.run([lmplz, "-o", str(order), "-S", "1G", "-T", str(tmp)], stdin=src, stdout=dst,
                              stderr=subprocess.PIPE, check=False)
    seconds = time.perf_counter() - t
    log = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        sys.exit(f"lmplz failed:\n{log[-2000:]}")
    discounts = [{"D1": float(a), "D2": float(b), "D3+": float(c)}
                 for a, b, c in re.findall(r"^\d+ \d+ D1=(\S+) D2=(\S+) D3\+=(\S+)$", log, re.M)]
    return seconds, discounts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--order", type=int, default=5)
    ap.add_argument("--smoothing", default="mkn", choices=SMOOTHINGS)
    ap.add_argument("--lmplz", default=shutil.which("lmplz"), help="path of KenLM's lmplz (default: PATH)")
    ap.add_argument("--all", action="store_true", help="also compare every smoothing at this order")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = ap.parse_args()

    res: dict = {"order": args.order, "smoothing": args.smoothing}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        train_txt, val_txt = tmp / "train.txt", tmp / "val.txt"
        train_txt.write_text("\n".join(shakespeare_sentences("train")) + "\n", encoding="utf-8")
        val_txt.write_text("\n".join(shakespeare_sentences("val")) + "\n", encoding="utf-8")
        val = read_lines(val_txt)

        t = time.perf_counter()
        corpus = corpus_from_lines(read_lines(train_txt))
        model = train_ngram(corpus, args.order, args.smoothing)
        build = time.perf_counter() - t
        t = time.perf_counter()
        ours_arpa = tmp / "ours.arpa"
        write_arpa(model, ours_arpa)
        write = time.perf_counter() - t
        scores = model.score_lines(val).summary()
        kenlm_ppl, kenlm_load = kenlm_perplexity(ours_arpa, val)
        res.update(train_words=corpus.words, train_sentences=corpus.sentences, val_tokens=scores["tokens"],
                   val_oovs=scores["oovs"], ngrams=model.ngram_counts(), build_s=build, write_arpa_s=write,
                   perplexity=scores["perplexity"], perplexity_excl_oov=scores["perplexity_excl_oov"],
                   kenlm_perplexity_of_our_arpa=kenlm_ppl, kenlm_load_s=kenlm_load,
                   discounts=model.info["orders"])
        if args.lmplz and args.smoothing == "mkn":
            lmplz_arpa = tmp / "lmplz.arpa"
            lmplz_s, lmplz_discounts = run_lmplz(args.lmplz, args.order, train_txt, lmplz_arpa, tmp)
            theirs = read_arpa(lmplz_arpa)
            ours_t, theirs_t = ngram_table(model), ngram_table(theirs)
            same_set = ours_t.keys() == theirs_t.keys()
            diff_p = max(abs(ours_t[g][0] - theirs_t[g][0]) for g in ours_t) if same_set else math.nan
            diff_b = max(abs(ours_t[g][1] - theirs_t[g][1]) for g in ours_t) if same_set else math.nan
            res["lmplz"] = {"seconds": lmplz_s, "discounts": lmplz_discounts, "ngrams": theirs.ngram_counts(),
                            "same_ngrams": same_set, "max_abs_diff_log10p": diff_p,
                            "max_abs_diff_log10backoff": diff_b,
                            "kenlm_perplexity": kenlm_perplexity(lmplz_arpa, val)[0]}
        if args.all:
            res["all"] = {}
            for sm in SMOOTHINGS:
                m = train_ngram(corpus, args.order, sm, k=0.01)
                s = m.score_lines(val).summary()
                path = tmp / f"{sm}.arpa"
                write_arpa(m, path)
                kp = kenlm_perplexity(path, val)[0] if math.isfinite(s["perplexity"]) else math.nan
                res["all"][sm] = {"perplexity": s["perplexity"],
                                  "perplexity_excl_oov": s["perplexity_excl_oov"], "kenlm_perplexity": kp}

    if args.json:
        print(json.dumps(res, default=str))
        return
    print(f"Shakespeare, {args.order}-gram {args.smoothing}: train {res['train_words']:,} words "
          f"({res['train_sentences']:,} sentences), held-out {res['val_tokens']:,} tokens incl. </s>, "
          f"{res['val_oovs']:,} OOV")
    print(f"n-grams per order: {res['ngrams']}")
    print(f"{'':34}{'peer':>14}{'ours':>14}{'ratio':>9}")
    print(f"{'perplexity (kenlm on our ARPA)':34}{kenlm_ppl:>14.4f}{res['perplexity']:>14.4f}"
          f"{res['perplexity'] / kenlm_ppl:>9.6f}")
    print(f"{'perplexity excl. OOV (ours)':34}{'':>14}{res['perplexity_excl_oov']:>14.4f}")
    print(f"{'build: count + estimate (s)':34}{'':>14}{build:>14.2f}")
    print(f"{'write ARPA (s)':34}{'':>14}{write:>14.2f}")
    if "lmplz" in res:
        lp = res["lmplz"]
        print(f"{'lmplz total vs ours build+write (s)':34}{lp['seconds']:>14.2f}{build + write:>14.2f}"
              f"{(build + write) / lp['seconds']:>9.2f}")
        print(f"{'perplexity (kenlm, lmplz ARPA)':34}{lp['kenlm_perplexity']:>14.4f}"
              f"{res['perplexity']:>14.4f}{res['perplexity'] / lp['kenlm_perplexity']:>9.6f}")
        print(f"same n-grams as lmplz: {lp['same_ngrams']}; largest |difference| in log10 p "
              f"{lp['max_abs_diff_log10p']:.2e}, in log10 backoff {lp['max_abs_diff_log10backoff']:.2e}")
        print("discounts       lmplz (D1 D2 D3+)            ours")
        for i, (a, b) in enumerate(zip(lp["discounts"], res["discounts"]), 1):
            print(f"  order {i}   {a['D1']:.6f} {a['D2']:.6f} {a['D3+']:.6f}   "
                  f"{b['D1']:.6f} {b['D2']:.6f} {b['D3+']:.6f}")
    elif args.smoothing == "mkn":
        print("no lmplz binary (pass --lmplz PATH): estimation not compared; discounts (D1 D2 D3+):")
        for i, b in enumerate(res["discounts"], 1):
            print(f"  order {i}   {b['D1']:.6f} {b['D2']:.6f} {b['D3+']:.6f}")
    if "all" in res:
        print(f"\n{'smoothing':14}{'perplexity':>12}{'excl. OOV':>12}{'kenlm':>12}")
        for sm, r in res["all"].items():
            print(f"{sm:14}{r['perplexity']:>12.3f}{r['perplexity_excl_oov']:>12.3f}{r['kenlm_perplexity']:>12.3f}")


if __name__ == "__main__":
    main()
