"""Closed-loop load test of an OpenAI-compatible completions server (ours, or any other such as
llama.cpp's) on loopback.

At each concurrency C, C workers each send streaming ``/v1/completions`` requests back to back
(``--requests`` in all): the same prompt, ``--max-tokens`` new tokens (``ignore_eos``), greedy.
Prints per concurrency: requests/s, output tokens/s (aggregate, from each stream's usage),
time to first token and inter-token latency (p50/p99, ms) and errors; ``--json`` prints one JSON
object. ``--ckpt RUN`` starts ``lmlab serve`` on RUN in a subprocess for the run (else ``--url``).

    python benchmarks/bench_serve.py --ckpt runs/llama --concurrency 1,8,32 --requests 64
    python benchmarks/bench_serve.py --url http://127.0.0.1:8080 --model NAME --concurrency 1,8,32
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx2 as httpx  # the HTTP client the openai package is built on


def pct(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` (nearest rank), None when empty."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def one_request(client: httpx.Client, url: str, body: dict) -> tuple[float, list[float], int]:
    """Send one streaming completion; return (time to first token, inter-token gaps, output tokens:
    the stream's usage, or without one (llama-cpp-python's server sends none) its text chunks, one
    token each)."""
    t0 = time.perf_counter()
    first, last, gaps, tokens, chunks = None, None, [], None, 0
    with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                chunks += 1
                now = time.perf_counter()
                if first is None:
                    first = now - t0
                else:
                    gaps.append(now - last)
                last = now
    ttft = first if first is not None else time.perf_counter() - t0
    return ttft, gaps, chunks if tokens is None else tokens


def run_level(base: str, model: str, key: str | None, concurrency: int, n_requests: int, prompt: str,
              max_tokens: int, eos_bias: int | None = None) -> dict:
    """Run ``n_requests`` at ``concurrency``; return the figures. Every response runs to ``max_tokens``:
    through ``ignore_eos`` (vLLM's extra, ours), or with ``eos_bias`` through a -100 logit bias on that
    id (for servers without ``ignore_eos``, such as llama.cpp's)."""
    url = base.rstrip("/") + "/v1/completions"
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    if eos_bias is None:
        body["ignore_eos"] = True
    else:
        body["logit_bias"] = {str(eos_bias): -100}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    left = iter(range(n_requests))
    lock = threading.Lock()
    ttft, gaps, tokens, errors = [], [], [0], []

    def worker() -> None:
        with httpx.Client(timeout=600, headers=headers) as client:
            while True:
                with lock:
                    if next(left, None) is None:
                        return
                try:
                    t, g, n = one_request(client, url, body)
                except Exception as e:  # counted and reported, the load goes on
                    with lock:
                        errors.append(str(e)[:200])
                    continue
                with lock:
                    ttft.append(t)
                    gaps.extend(g)
                    tokens[0] += n

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    ms = lambda v: None if v is None else round(v * 1000, 2)  # noqa: E731
    return {"concurrency": concurrency, "requests": n_requests, "seconds": round(seconds, 3),
            "requests_per_s": round(len(ttft) / seconds, 3),
            "output_tokens_per_s": round(tokens[0] / seconds, 1),
            "ttft_p50_ms": ms(pct(ttft, 0.5)), "ttft_p99_ms": ms(pct(ttft, 0.99)),
            "itl_p50_ms": ms(pct(gaps, 0.5)), "itl_p99_ms": ms(pct(gaps, 0.99)),
            "itl_mean_ms": ms(statistics.fmean(gaps)) if gaps else None,
            "errors": len(errors), "first_error": errors[0] if errors else None}


def start_lmlab(ckpt: str, max_batch: int) -> tuple[subprocess.Popen, str]:
    """Start ``lmlab serve`` on a free loopback port; return the process and its URL once healthy."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "lmlab.cli", "serve", "--ckpt", ckpt, "--port", str(port),
                             "--served-name", "bench", "--max-batch", str(max_batch), "--max-queue", "1024"],
                            env={**os.environ, "LMLAB_API_KEY": ""}, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass  # not listening yet: the server is still loading the model
        if proc.poll() is not None:
            raise SystemExit("lmlab serve did not start")
        time.sleep(0.1)
    proc.terminate()
    raise SystemExit("lmlab serve did not become healthy in 120 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="server base URL (without /v1)")
    ap.add_argument("--ckpt", default=None, help="start 'lmlab serve' on this run instead of --url")
    ap.add_argument("--model", default="bench", help="the model name the server expects")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=256,
                    help="requests per concurrency level (enough that each of 32 workers sends several)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt", default="ROMEO: But soft, what light through yonder window breaks?")
    ap.add_argument("--max-batch", type=int, default=32, help="with --ckpt: the server's --max-batch")
    ap.add_argument("--eos-bias", type=int, default=None,
                    help="end-of-text id to ban with logit_bias -100 instead of ignore_eos (llama.cpp)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if (args.url is None) == (args.ckpt is None):
        raise SystemExit("give --url or --ckpt")
    proc = None
    if args.ckpt is not None:
        proc, url = start_lmlab(args.ckpt, args.max_batch)
    else:
        url = args.url
    try:
        run_level(url, args.model, args.api_key, 1, 2, args.prompt, 4, args.eos_bias)  # warm-up
        levels = [run_level(url, args.model, args.api_key, int(c), max(args.requests, int(c)), args.prompt,
                            args.max_tokens, args.eos_bias) for c in args.concurrency.split(",")]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
    base = levels[0]["output_tokens_per_s"] or 1
    for lv in levels:
        lv["tokens_per_s_vs_first"] = round(lv["output_tokens_per_s"] / base, 2)
    if args.json:
        print(json.dumps({"url": url, "max_tokens": args.max_tokens, "levels": levels}))
        return
    print(f"{'conc':>4} {'req/s':>7} {'tok/s':>8} {'x c1':>5} {'ttft p50':>9} {'ttft p99':>9} {'itl p50':>8} "
          f"{'itl p99':>8} {'errors':>6}")
    for lv in levels:
        print(f"{lv['concurrency']:>4} {lv['requests_per_s']:>7.2f} {lv['output_tokens_per_s']:>8.1f} "
              f"{lv['tokens_per_s_vs_first']:>5.2f} {lv['ttft_p50_ms']!s:>9} {lv['ttft_p99_ms']!s:>9} "
              f"{lv['itl_p50_ms']!s:>8} {lv['itl_p99_ms']!s:>8} {lv['errors']:>6}")


if __name__ == "__main__":
    main()
