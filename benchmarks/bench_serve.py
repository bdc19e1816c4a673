"""Closed-loop load test of OpenAI-compatible completions servers on loopback: ours against
llama.cpp's on the same model, in one run.

At each concurrency C, C workers each send streaming ``/v1/completions`` requests back to back
(``--requests`` in all): the same prompt, ``--max-tokens`` new tokens, greedy, every response run to
``--max-tokens`` (``ignore_eos`` for ours; llama.cpp's server has none, so its end-of-text id gets a
-100 logit bias). Figures per level: requests/s, output tokens/s (aggregate), time to first token
and inter-token latency (p50/p99, ms), errors.

``--ckpt RUN`` starts both servers itself on free loopback ports: ``lmlab serve --ckpt RUN`` and
llama-cpp-python's server (the ``llamacpp`` extra) on ``lmlab export gguf --dtype f32`` of the same
run (or ``--gguf FILE``; ``--against none``: ours alone). The ``--repeats`` runs of each level
alternate between the servers (ours, theirs, ours, theirs, ...), so a machine that gets busier or
quieter during the run moves both alike. Reported per level and server: the median tokens/s with
its spread (min-max over the repeats), the ratio ours/theirs of the medians, and each server's
scaling (median at the last level / at the first, e.g. ours@32 / ours@1). ``--url`` measures one
server that is already running (any OpenAI-compatible one). ``--json`` prints one JSON object,
``--out FILE`` also writes it to FILE.

    python benchmarks/bench_serve.py --ckpt runs/lm-movies --concurrency 1,8,32 --requests 256 --repeats 3
    python benchmarks/bench_serve.py --url http://127.0.0.1:8080 --model NAME --eos-bias 0
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

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


@dataclass
class Server:
    """A server under test: its label, base URL, the model name it expects, its API key and, for a
    server without ``ignore_eos``, the end-of-text id to ban with a logit bias."""

    label: str
    url: str
    model: str = "bench"
    key: str | None = None
    eos_bias: int | None = None


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, url: str, what: str, timeout_s: float = 300) -> None:
    """Wait until ``GET url`` answers 200 (a loading server answers 503 or does not listen yet)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # refused: the server is not listening yet; try again
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode} before it was ready")
        time.sleep(0.1)
    raise SystemExit(f"{what} was not ready after {timeout_s:.0f} s")


def start_lmlab(ckpt: str, max_batch: int, env: dict[str, str]) -> tuple[subprocess.Popen, Server]:
    """Start ``lmlab serve`` on ``ckpt`` on a free loopback port; return the process and the server
    once its model is loaded."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lmlab.cli", "serve", "--ckpt", ckpt, "--port", str(port),
                             "--served-name", "bench", "--max-batch", str(max_batch), "--max-queue", "1024"],
                            env={**env, "LMLAB_API_KEY": ""}, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + "/health", "lmlab serve")
    return proc, Server("lmlab", url)


def export_gguf(ckpt: str, out: Path, env: dict[str, str]) -> Path:
    """Export ``ckpt`` as an f32 GGUF file at ``out`` with ``lmlab export gguf``; return ``out``."""
    cmd = ["export", "gguf", "--ckpt", ckpt, "--out", str(out), "--dtype", "f32"]
    r = subprocess.run([sys.executable, "-m", "lmlab.cli", *cmd], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"lmlab export gguf failed: {r.stderr.strip()}")
    return out


def start_llamacpp(gguf: Path, threads: int, n_ctx: int, eos_id: int | None,
                   env: dict[str, str]) -> tuple[subprocess.Popen, Server]:
    """Start llama-cpp-python's server on ``gguf`` on a free loopback port; return the process and the
    server once it answers. ``--interrupt_requests False``: by default a new request cuts off the
    running one."""
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        raise SystemExit("llama-cpp-python's server is not installed: pip install 'llama-cpp-python[server]' "
                         "(or give --against none)") from None
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
                             "--host", "127.0.0.1", "--port", str(port), "--model_alias", "bench",
                             "--n_ctx", str(n_ctx),
                             "--n_threads", str(threads), "--n_threads_batch", str(threads),
                             "--interrupt_requests", "False"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + "/v1/models", "llama_cpp.server")
    return proc, Server("llama.cpp", url, eos_bias=eos_id)


def measure(servers: list[Server], levels: list[int], repeats: int, n_requests: int, prompt: str,
            max_tokens: int, log=print) -> list[dict]:
    """Warm every server up, then run each level ``repeats`` times per server, the servers taking
    turns; return per level ``{"concurrency", "servers": {label: summary}}`` (see :func:`summarize`)."""
    for s in servers:
        run_level(s.url, s.model, s.key, 1, 2, prompt, 4, s.eos_bias)
    out = []
    for c in levels:
        runs: dict[str, list[dict]] = {s.label: [] for s in servers}
        for rep in range(repeats):
            for s in servers:
                r = run_level(s.url, s.model, s.key, c, max(n_requests, c), prompt, max_tokens, s.eos_bias)
                runs[s.label].append(r)
                log(f"  concurrency {c:>3}  repeat {rep + 1}/{repeats}  {s.label:<9} "
                    f"{r['output_tokens_per_s']:>8.1f} tok/s  {r['errors']} errors")
        out.append({"concurrency": c, "servers": {k: summarize(v) for k, v in runs.items()}})
    return out


def summarize(runs: list[dict]) -> dict:
    """The repeats of one level on one server: median, min and max output tokens/s, medians of the
    other figures, the errors summed, and every run."""
    tps = [r["output_tokens_per_s"] for r in runs]
    def med(key: str) -> float | None:
        values = [r[key] for r in runs]
        return None if None in values else round(statistics.median(values), 2)

    return {"tokens_per_s": round(statistics.median(tps), 1), "tokens_per_s_min": min(tps),
            "tokens_per_s_max": max(tps), "requests_per_s": med("requests_per_s"),
            "ttft_p50_ms": med("ttft_p50_ms"), "ttft_p99_ms": med("ttft_p99_ms"),
            "itl_p50_ms": med("itl_p50_ms"), "itl_p99_ms": med("itl_p99_ms"),
            "errors": sum(r["errors"] for r in runs), "runs": runs}


def ratios(levels: list[dict], labels: list[str]) -> dict:
    """Each server's scaling (median tokens/s at the last level / at the first) and, with two servers,
    the first's median over the second's at each level."""
    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 2) if b else None

    first, last = levels[0], levels[-1]
    tps = lambda lv, k: lv["servers"][k]["tokens_per_s"]  # noqa: E731
    out: dict = {"scaling": {k: ratio(tps(last, k), tps(first, k)) for k in labels},
                 "scaling_levels": [first["concurrency"], last["concurrency"]]}
    if len(labels) == 2:
        a, b = labels
        out[f"{a}/{b}"] = {lv["concurrency"]: ratio(tps(lv, a), tps(lv, b)) for lv in levels}
    return out


def table(result: dict) -> str:
    """The result as a text table and the ratios under it."""
    labels = result["servers"]
    rows = [f"{'conc':>4} {'server':<9} {'tok/s':>8} {'min-max':>17} {'req/s':>7} {'ttft p50':>9} "
            f"{'ttft p99':>9} {'itl p50':>8} {'itl p99':>8} {'errors':>6}"]
    for lv in result["levels"]:
        for k in labels:
            s = lv["servers"][k]
            spread = f"{s['tokens_per_s_min']:.1f}-{s['tokens_per_s_max']:.1f}"
            rows.append(f"{lv['concurrency']:>4} {k:<9} {s['tokens_per_s']:>8.1f} {spread:>17} "
                        f"{s['requests_per_s']:>7.2f} {s['ttft_p50_ms']!s:>9} {s['ttft_p99_ms']!s:>9} "
                        f"{s['itl_p50_ms']!s:>8} {s['itl_p99_ms']!s:>8} {s['errors']:>6}")
    r = result["ratios"]
    lo, hi = r["scaling_levels"]
    rows.append("")
    rows.extend(f"{k}@{hi} / {k}@{lo}: {v}x" for k, v in r["scaling"].items())
    if len(labels) == 2:
        key = f"{labels[0]}/{labels[1]}"
        rows.append(f"{key} (median tokens/s): " + ", ".join(f"{v}x at {c}" for c, v in r[key].items()))
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=None, help="start 'lmlab serve' on this run (and llama.cpp's server on "
                                                 "its f32 GGUF export)")
    ap.add_argument("--url", default=None,
                    help="instead: measure the server already running at this base URL (without /v1)")
    ap.add_argument("--against", choices=["llamacpp", "none"], default="llamacpp",
                    help="with --ckpt: the peer server started beside ours")
    ap.add_argument("--gguf", default=None, help="with --ckpt: llama.cpp's model file (default: export the "
                                                 "run as f32 into a temporary folder)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="with --ckpt: CPU threads of each server (OMP_NUM_THREADS for ours, n_threads for "
                         "llama.cpp's)")
    ap.add_argument("--n-ctx", type=int, default=2048, help="llama.cpp's context size")
    ap.add_argument("--model", default="bench", help="with --url: the model name the server expects")
    ap.add_argument("--api-key", default=None, help="with --url: the server's API key")
    ap.add_argument("--eos-bias", type=int, default=None,
                    help="with --url: end-of-text id to ban with logit_bias -100 instead of ignore_eos "
                         "(servers without ignore_eos, such as llama.cpp's)")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=256,
                    help="requests per level and run (enough that each of 32 workers sends several)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each level per server (interleaved)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt", default="ROMEO: But soft, what light through yonder window breaks?")
    ap.add_argument("--max-batch", type=int, default=32, help="with --ckpt: our server's --max-batch")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--out", default=None, help="also write the JSON object to this file")
    args = ap.parse_args()
    if (args.url is None) == (args.ckpt is None):
        raise SystemExit("give --ckpt RUN (start the servers) or --url URL (one running server)")
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.repeats < 1 or not levels or min(levels) < 1:
        raise SystemExit("--repeats and every --concurrency level must be >= 1")
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    procs: list[subprocess.Popen] = []
    info: dict = {"max_tokens": args.max_tokens, "requests": args.requests, "repeats": args.repeats,
                  "prompt": args.prompt}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if args.ckpt is not None:
                info.update(ckpt=args.ckpt, threads=args.threads, max_batch=args.max_batch)
                proc, ours = start_lmlab(args.ckpt, args.max_batch, env)
                procs.append(proc)
                servers = [ours]
                if args.against == "llamacpp":
                    gguf = Path(args.gguf) if args.gguf else \
                        export_gguf(args.ckpt, Path(tmp) / "model-f32.gguf", env)
                    eos = httpx.get(ours.url + "/tokenizer_info", timeout=10).json()["eos_token_id"]
                    proc, theirs = start_llamacpp(gguf, args.threads, args.n_ctx, eos, env)
                    procs.append(proc)
                    servers.append(theirs)
                    info.update(gguf=str(gguf) if args.gguf else "f32 export of the run", n_ctx=args.n_ctx)
            else:
                servers = [Server("server", args.url, args.model, args.api_key, args.eos_bias)]
                info["url"] = args.url
            measured = measure(servers, levels, args.repeats, args.requests, args.prompt, args.max_tokens,
                               log)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait()
    labels = [s.label for s in servers]
    result = {**info, "servers": labels, "levels": measured, "ratios": ratios(measured, labels)}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result) if args.json else table(result))


if __name__ == "__main__":
    main()
