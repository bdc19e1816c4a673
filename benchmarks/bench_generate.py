"""Greedy decoding speed: lmlab's Decoder vs Hugging Face ``LlamaForCausalLM.generate``.

Both models hold the SAME random weights (HF builds them, lmlab imports the folder) and
run in one process: batch 1, a 32-token prompt, 128 new tokens by default. Prints the
tokens/s of each (best and median of interleaved repeats), the ratio, whether both
produced the same tokens and, with ``--memory``, the peak extra resident memory of one
generation (each measured in a fresh subprocess). On a shared machine use ``--threads 1``:
OpenMP threads that wait on each other on busy cores slow both sides unpredictably.

    python benchmarks/bench_generate.py [--new-tokens 128] [--repeats 10] [--threads 1] [--memory]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lmlab.generate import generate_ids

SHAPE = ("vocab", "d_model", "layers", "heads", "kv_heads", "seed")


def build(folder: Path, args: argparse.Namespace):
    """Save a random HF LlamaForCausalLM of the asked shape to ``folder``; return (hf_model, our_model)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmlab.interop.hf import load_hf

    torch.manual_seed(args.seed)
    d = args.d_model
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=d, intermediate_size=int(8 * d / 3 + 63) // 64 * 64,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, max_position_embeddings=1024,
                      tie_word_embeddings=True)
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # O(1) logits, so the greedy paths are not decided by near-ties
        for p in hf.parameters():
            p.normal_(0.0, 0.1)
    hf.save_pretrained(folder)
    return hf, load_hf(folder)


def run_hf(hf, prompt: torch.Tensor, n: int) -> list[int]:
    """HF greedy generation (its default dynamic cache); return the new tokens."""
    out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                      do_sample=False, pad_token_id=0)
    return out[0, prompt.shape[1]:].tolist()


def run_ours(model, prompt: torch.Tensor, n: int) -> list[int]:
    """lmlab greedy generation (static KV cache); return the new tokens."""
    return generate_ids(model, prompt, n, temperature=0)[0, prompt.shape[1]:].tolist()


def make_prompt(args: argparse.Namespace) -> torch.Tensor:
    return torch.randint(0, args.vocab, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(1))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def memory_child(args: argparse.Namespace) -> None:
    """In a subprocess: load one model, then print the peak RSS growth during one generation."""
    hf, ours = build(Path(args.folder), args)
    model, fn = (hf, run_hf) if args.memory_child == "hf" else (ours, run_ours)
    del hf, ours
    prompt = make_prompt(args)
    before = _rss_bytes()
    with torch.inference_mode():
        fn(model, prompt, args.new_tokens)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_extra_mib": max(0, peak - before) / 2**20}))


def measure_memory(args: argparse.Namespace, tmp: str, which: str) -> float:
    flags = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in (*SHAPE, "prompt_tokens", "new_tokens",
                                                                      "threads")]
    cmd = [sys.executable, __file__, "--memory-child", which, "--folder", str(Path(tmp) / which), *flags]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return round(json.loads(out.strip().splitlines()[-1])["peak_extra_mib"], 1)


def benchmark(args: argparse.Namespace) -> dict:
    """Time both generators, interleaved; return the figures."""
    with tempfile.TemporaryDirectory() as tmp:
        hf, ours = build(Path(tmp), args)
        device = torch.device(args.device)
        hf.to(device)
        ours.to(device)
        prompt, n = make_prompt(args).to(device), args.new_tokens
        run_hf(hf, prompt, 8)  # warm up both
        run_ours(ours, prompt, 8)
        times: dict[str, list[float]] = {"hf": [], "ours": []}
        outs = {}
        for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
            for name, fn, model in (("hf", run_hf, hf), ("ours", run_ours, ours)):
                t = time.perf_counter()
                outs[name] = fn(model, prompt, n)
                times[name].append(time.perf_counter() - t)
        result = {"config": {**{k: getattr(args, k) for k in SHAPE}, "params": ours.num_params(),
                             "prompt_tokens": args.prompt_tokens, "new_tokens": n, "device": str(device),
                             "threads": torch.get_num_threads(), "repeats": args.repeats},
                  "same_tokens": outs["hf"] == outs["ours"]}
        for name, ts in times.items():
            # best of the repeats = the least disturbed run (timeit's rule); the median for reference
            result[f"{name}_tokens_per_s"] = round(n / min(ts), 1)
            result[f"{name}_tokens_per_s_median"] = round(n / statistics.median(ts), 1)
        for key in ("", "_median"):
            ratio = result[f"ours_tokens_per_s{key}"] / result[f"hf_tokens_per_s{key}"]
            result[f"speedup{key}"] = round(ratio, 2)
        if args.memory:
            for name in ("hf", "ours"):
                result[f"{name}_peak_extra_mib"] = measure_memory(args, tmp, name)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory", action="store_true", help="also measure peak memory (fresh subprocesses)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--memory-child", choices=["hf", "ours"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return
    r = benchmark(args)
    if args.json:
        print(json.dumps(r))
        return
    c = r["config"]
    print(f"LLaMA d={c['d_model']} layers={c['layers']} heads={c['heads']}/{c['kv_heads']} "
          f"vocab={c['vocab']} ({c['params']:,} params), batch 1, {c['prompt_tokens']}-token prompt, "
          f"{c['new_tokens']} new tokens, greedy, {c['device']}, {c['threads']} threads")
    print(f"  tokens/s, best of {c['repeats']} (median)")
    for label, name in (("HF generate", "hf"), ("lmlab generate", "ours")):
        print(f"  {label:<16}{r[f'{name}_tokens_per_s']:>8.1f}  ({r[f'{name}_tokens_per_s_median']:.1f})")
    print(f"  {'speedup':<16}{r['speedup']:>7.2f}x  ({r['speedup_median']:.2f}x)   "
          f"same tokens: {r['same_tokens']}")
    if args.memory:
        print(f"  peak extra RSS  HF {r['hf_peak_extra_mib']:.1f} MiB, "
              f"lmlab {r['ours_peak_extra_mib']:.1f} MiB")


if __name__ == "__main__":
    main()
