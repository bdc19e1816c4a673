"""One-row products (decoding) against a weight's memory order: row-major ``(out, in)`` as
``nn.Linear`` stores it, against column-major (``weight.T`` contiguous), the order
:func:`lmlab.nn.linear.use_gemv_layout` gives an inference model's weights.

A batch-1 decoding step multiplies one row by every weight of the model, so it reads all the
weights from memory once. This times ``F.linear(x, w)`` for ``x (rows, in)`` over the linears of a
Transformer decoder (d_model, layers, d_ff, vocabulary head), several copies so that the weights
do not stay in the CPU's caches between passes (as in a real model, whose weights are larger
than the caches), both orders round-robin in one process, and prints the time per pass,
the effective read bandwidth and the ratio. Both orders give the same values (checked).

    python benchmarks/bench_gemv.py [--d-model 256] [--layers 4] [--vocab 8192] [--rows 1,8]
                                    [--threads 1] [--rounds 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def weights(d: int, layers: int, d_ff: int, vocab: int, copies: int,
            gen: torch.Generator) -> list[list[torch.Tensor]]:
    """``copies`` sets of a decoder's weight matrices ``(out, in)``: per layer qkv, attention output,
    MLP up and down; then the output layer."""
    shapes = [(3 * d, d), (d, d), (d_ff, d), (d, d_ff)] * layers + [(vocab, d)]
    return [[torch.randn(o, i, generator=gen) for o, i in shapes] for _ in range(copies)]


def one_pass(sets: list[list[torch.Tensor]], xs: dict[int, torch.Tensor]) -> None:
    """Multiply the input row(s) of the right width by every weight of every set."""
    for ws in sets:
        for w in ws:
            F.linear(xs[w.shape[1]], w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-ff", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--copies", type=int, default=4, help="weight sets cycled through (beyond the caches)")
    ap.add_argument("--rows", default="1,8", help="comma-separated rows per product (the decoding batch)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    row_major = weights(args.d_model, args.layers, args.d_ff, args.vocab, args.copies, gen)
    col_major = [[w.t().contiguous().t() for w in ws] for ws in row_major]
    mbytes = sum(w.numel() * w.element_size() for w in row_major[0]) / 1e6
    result: dict = {"settings": vars(args), "mbytes_per_pass": round(mbytes, 2), "rows": {}}
    with torch.inference_mode():
        for rows in map(int, args.rows.split(",")):
            xs = {n: torch.randn(rows, n, generator=gen) for n in (args.d_model, args.d_ff)}
            for a, b in zip(row_major[0], col_major[0], strict=True):
                assert torch.allclose(F.linear(xs[a.shape[1]], a), F.linear(xs[b.shape[1]], b), atol=1e-4)
            times: dict[str, list[float]] = {"row-major": [], "column-major": []}
            for order in (row_major, col_major):  # warm-up
                one_pass(order, xs)
            for _ in range(args.rounds):
                for name, order in (("row-major", row_major), ("column-major", col_major)):
                    t = time.perf_counter()
                    one_pass(order, xs)
                    times[name].append((time.perf_counter() - t) / args.copies * 1e3)
            med = {k: statistics.median(v) for k, v in times.items()}
            ratios = [r / c for r, c in zip(times["row-major"], times["column-major"], strict=True)]
            result["rows"][rows] = {
                "ms_per_pass": {k: round(v, 3) for k, v in med.items()},
                "gb_per_s": {k: round(mbytes / v, 1) for k, v in med.items()},
                "speedup": round(med["row-major"] / med["column-major"], 2),
                "speedup_spread": [round(min(ratios), 2), round(max(ratios), 2)]}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{mbytes:.1f} MB of weights per pass (d={args.d_model}, {args.layers} layers, d_ff {args.d_ff}, "
          f"vocab {args.vocab}), {args.threads} thread(s), median of {args.rounds} rounds")
    print(f"{'rows':>4}  {'row-major ms':>12}  {'column-major ms':>15}  {'GB/s row / col':>14}  "
          "speedup (spread)")
    for rows, r in result["rows"].items():
        ms, gb = r["ms_per_pass"], r["gb_per_s"]
        lo, hi = r["speedup_spread"]
        print(f"{rows:>4}  {ms['row-major']:>12.3f}  {ms['column-major']:>15.3f}  "
              f"{gb['row-major']:>6.1f} / {gb['column-major']:<6.1f}  "
              f"{r['speedup']:.2f}x ({lo:.2f}-{hi:.2f})")


if __name__ == "__main__":
    main()
