"""The README's table of pre-Transformer LMs: validation bits per byte after the same training.

Prepares Shakespeare with one 4096-token BPE, trains each preset for the same number of
tokens (500 steps x 8 windows x 128 tokens, fp32, one thread, the ``lmlab pretrain``
defaults otherwise) through :func:`lmlab.train.pretrain.pretrain`, and scores each on the
whole validation split, next to an add-one unigram baseline. fp32 on one thread makes the
figures the same from run to run on one machine (and close across machines).

    python benchmarks/table_classic_lms.py [--models nplm-small,lstm-small] [--steps 500] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from lmlab.data.prepare import load_prepared, prepare
from lmlab.evaluate.perplexity import evaluate_perplexity
from lmlab.loader import load_model_any
from lmlab.train.pretrain import PretrainConfig, pretrain

MODELS = ["rnn-small", "gru-small", "lstm-small", "nplm-small", "elmo-small"]


def unigram_bpb(train: np.ndarray, val: np.ndarray, vocab: int, val_bytes: int) -> float:
    """Bits per byte of the validation tokens under an add-one unigram model of the training tokens."""
    counts = np.bincount(np.asarray(train, dtype=np.int64), minlength=vocab) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[np.asarray(val, dtype=np.int64)].sum() / math.log(2) / val_bytes)


def main() -> None:
    """Train and score each model; print the table (or one JSON object with ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--data", type=Path, default=None, help="prepared data (default: Shakespeare BPE-4096)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data
        if data_dir is None:
            data_dir = Path(tmp) / "data"
            prepare("shakespeare", data_dir, kind="bpe", vocab_size=4096)
        data = load_prepared(data_dir)
        val_bytes = int(data.meta["splits"]["val"]["bytes"])
        rows = [{"model": "unigram baseline", "params": None,
                 "val_bpb": unigram_bpb(data.train, data.val, data.vocab_size, val_bytes)}]
        for name in args.models.split(","):
            out = Path(tmp) / name
            cfg = PretrainConfig(model=name, data=data_dir, out=out, block_size=args.block_size,
                                 batch_size=args.batch_size, max_steps=args.steps, precision="fp32",
                                 eval_iters=0, device="cpu", progress=False)
            result = pretrain(cfg)
            model = load_model_any(out)
            r = evaluate_perplexity(model, data.val, block_size=args.block_size, batch_size=16,
                                    split_bytes=val_bytes)
            rows.append({"model": name, "params": result.params, "val_bpb": r.bits_per_byte,
                         "tokens": result.tokens})
    if args.json:
        print(json.dumps({"steps": args.steps, "batch_size": args.batch_size, "block_size": args.block_size,
                          "rows": rows}))
        return
    print("| model | params | val bits/byte |\n|---|---:|---:|")
    for r in rows:
        params = "-" if r["params"] is None else f"{r['params'] / 1e6:.2f}M"
        print(f"| {r['model']} | {params} | {r['val_bpb']:.3f} |")


if __name__ == "__main__":
    main()
