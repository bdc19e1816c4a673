"""fp32 training matmuls: torch's BLAS (``F.linear`` + autograd, what HF runs) vs lmlab's oneDNN route.

For each linear layer shape of a decoder (qkv, attention output, SwiGLU up/down, the
vocabulary head) it times forward + backward (input and weight gradients) both ways,
round-robin in one process, and prints GFLOP/s for each and the ratio. It also checks
that both agree with a float64 reference to fp32 accuracy, so the speed is not bought
with precision.

    python benchmarks/bench_matmul.py [--rows 2048] [--d-model 256] [--vocab 8192] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F


def shapes(d: int, vocab: int) -> dict[str, tuple[int, int]]:
    """(in, out) features of a LLaMA block's linears at width ``d``, and of its output layer."""
    hidden = int(8 * d / 3 + 63) // 64 * 64
    return {"qkv": (d, 3 * d), "attn-out": (d, d), "swiglu-up": (d, 2 * hidden),
            "swiglu-down": (hidden, d), "lm-head": (d, vocab)}


def step(route: str, x: torch.Tensor, w: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Forward and both gradients of ``x @ w.T`` on ``route`` ('blas' or 'onednn')."""
    from lmlab.nn.linear import linear

    os.environ["LMLAB_CPU_MATMUL"] = "aten" if route == "blas" else "onednn"
    y = linear(x, w) if route == "onednn" else F.linear(x, w)
    return (y, *torch.autograd.grad(y, (x, w), g))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2048, help="tokens per batch (batch x seq)")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from lmlab.nn.linear import onednn_available

    saved = os.environ.get("LMLAB_CPU_MATMUL")
    if not onednn_available():
        print("nothing to compare: this torch build has no oneDNN (mkldnn)")
        return
    torch.manual_seed(0)
    result = {"threads": torch.get_num_threads(), "rows": args.rows, "layers": {}}
    try:
        for name, (n_in, n_out) in shapes(args.d_model, args.vocab).items():
            x = torch.randn(args.rows, n_in, requires_grad=True)
            w = (torch.randn(n_out, n_in) * n_in**-0.5).requires_grad_()
            g = torch.randn(args.rows, n_out)
            x64, w64, g64 = x.detach().double(), w.detach().double(), g.double()
            ref = [x64 @ w64.t(), g64 @ w64, g64.t() @ x64]
            times: dict[str, list[float]] = {"blas": [], "onednn": []}
            err: dict[str, float] = {}
            for route in times:
                got = step(route, x, w, g)  # warm-up, and the accuracy check
                err[route] = max(((a.double() - r).abs().max() / r.abs().max()).item()
                                 for a, r in zip(got, ref))
            for _ in range(args.repeats):
                for route in times:
                    t = time.perf_counter()
                    step(route, x, w, g)
                    times[route].append(time.perf_counter() - t)
            flops = 3 * 2 * args.rows * n_in * n_out
            gf = {r: flops / statistics.median(t) / 1e9 for r, t in times.items()}
            result["layers"][name] = {"shape": [args.rows, n_in, n_out], "blas_gflops": round(gf["blas"], 1),
                                      "onednn_gflops": round(gf["onednn"], 1),
                                      "ratio": round(gf["onednn"] / gf["blas"], 2),
                                      "max_rel_error": {r: float(f"{e:.2e}") for r, e in err.items()}}
    finally:
        if saved is None:
            os.environ.pop("LMLAB_CPU_MATMUL", None)
        else:
            os.environ["LMLAB_CPU_MATMUL"] = saved
    if args.json:
        print(json.dumps(result))
        return
    print(f"fp32 linear forward + backward, {args.rows} rows, {result['threads']} threads")
    print(f"  {'layer':<13}{'rows x in x out':>20}{'BLAS GF/s':>11}{'oneDNN GF/s':>13}{'ratio':>7}"
          f"{'rel err BLAS / oneDNN':>24}")
    for name, r in result["layers"].items():
        m, k, n = r["shape"]
        e = r["max_rel_error"]
        print(f"  {name:<13}{f'{m} x {k} x {n}':>20}{r['blas_gflops']:>11.0f}{r['onednn_gflops']:>13.0f}"
              f"{r['ratio']:>6.2f}x{e['blas']:>13.1e} / {e['onednn']:.1e}")


if __name__ == "__main__":
    main()
