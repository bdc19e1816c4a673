"""Does the playground page keep up? Time to first token as the page sees it against the API's own,
with ``--columns`` models streaming at once.

One in-process ``lmlab serve`` on a free loopback port, of ``--ckpt RUN`` in every column (default: a
random tiny LLaMA with a character tokenizer, written to a temporary folder), or of every run under
``--runs DIR`` with a different model in each column (``--models A,B,..``; default the first
``--columns`` names), all loaded before the first request; headless system Chromium
(``/usr/bin/chromium``, driven by playwright's Python package). Each repeat runs the same request (``--mode``
chat or raw completion; greedy, 5 top logprobs, ``--max-tokens`` new tokens) in ``--columns`` columns,
once from the page (its TTFT: from the column's creation, before its ``fetch``, to the first token put
into the page) and once from Python threads that send the same requests at once (TTFT: from sending to
the first chunk that carries a token). The runs alternate (page, API, page, ...), so a machine that
gets busier moves both alike. Reported: the median TTFT of each (ms, over every column of every
repeat) with its min-max spread, and the page's overhead (page - API); the issue asks for at most
50 ms with 4 columns.
Without Chromium or playwright it says so and exits 0.

    python benchmarks/bench_playground.py --ckpt runs/lineage/gpt2 --columns 4 --repeats 5 --json
    python benchmarks/bench_playground.py --runs runs/lineage --models ngram,lstm,gpt2,llama \
        --mode completion --prompt "ROMEO:" --repeats 10
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import string
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def tiny_run(folder: Path) -> Path:
    """Write a random tiny LLaMA (d 48, 2 layers, context 512) and a character tokenizer into ``folder``;
    return it."""
    from lmlab.data.tokenizers import train_tokenizer
    from lmlab.models.registry import build_model, get_preset, save_model

    tok = train_tokenizer("char", iter([string.printable]))
    model = build_model(get_preset("llama-tiny", vocab_size=tok.vocab_size, d_model=48, n_layer=2,
                                   block_size=512))
    save_model(model, folder / "model.safetensors")
    tok.save(folder / "tokenizer.json")
    return folder


def api_ttfts(url: str, bodies: list[dict], path: str) -> list[float]:
    """Send the streaming requests ``bodies`` to ``path`` at once; return each one's time to its first
    token (ms)."""
    columns = len(bodies)
    out: list[float | None] = [None] * columns
    start = threading.Barrier(columns)

    def one(i: int) -> None:
        req = urllib.request.Request(url + path, json.dumps(bodies[i]).encode(),
                                     {"Content-Type": "application/json"})
        start.wait()
        t0 = time.perf_counter()
        with urllib.request.urlopen(req) as resp:
            for line in resp:
                if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                    continue
                choice = (json.loads(line[6:]).get("choices") or [{}])[0]
                if choice.get("logprobs") and out[i] is None:
                    out[i] = (time.perf_counter() - t0) * 1000
        # (read to the end: the next run starts on an idle server)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(columns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if None in out:
        raise SystemExit("a stream of the API ended without a token")
    return [x for x in out if x is not None]


def page_ttfts(page, prompt: str, columns: int, timeout_ms: float) -> list[float]:
    """Send ``prompt`` from the page to ``columns`` columns; return each column's TTFT (ms) once all
    are done."""
    page.fill("#prompt", prompt)
    page.press("#prompt", "Enter")
    page.wait_for_function(
        "(n) => { const c = [...document.querySelectorAll('.column')];"
        " return c.length === n && c.every(x => x.dataset.state === 'done'); }",
        arg=columns, timeout=timeout_ms)
    got = page.eval_on_selector_all(".column", "els => els.map(e => e.dataset.ttft)")
    if None in got:
        raise SystemExit("a column of the page ended without a token")
    return [float(x) for x in got]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, default=None, help="the run to serve in every column (default: a "
                                                            "random tiny one)")
    ap.add_argument("--runs", type=Path, default=None, help="serve every run under this folder, one model a "
                                                            "column")
    ap.add_argument("--models", default=None, help="with --runs: the served names of the columns, comma-"
                                                   "separated (default: the first --columns names)")
    ap.add_argument("--columns", type=int, default=4, help="models streaming at once (1-4)")
    ap.add_argument("--mode", choices=("chat", "completion"), default="chat")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if not 1 <= args.columns <= 4:
        raise SystemExit("--columns: give 1 to 4")
    if args.runs is not None and args.ckpt is not None:
        raise SystemExit("give --ckpt RUN or --runs DIR, not both")
    if not Path(CHROMIUM).exists() or importlib.util.find_spec("playwright") is None:
        print(f"skipped: needs {CHROMIUM} (apt-get install chromium) and the playwright package")
        return
    with tempfile.TemporaryDirectory() as tmp:
        measure(args, args.ckpt or (None if args.runs else tiny_run(Path(tmp))))


def served_columns(args: argparse.Namespace, ckpt: Path | None):
    """Return the server's :class:`~lmlab.serve.app.Served` and the model name of each column."""
    from lmlab.serve.server import ServeConfig, build

    if ckpt is not None:
        served = build(ServeConfig(ckpt=[str(ckpt)], api_key=None, served_name="model"))
        return served, ["model"] * args.columns
    served = build(ServeConfig(runs=args.runs, api_key=None, max_loaded=4))
    names = args.models.split(",") if args.models else served.pool.names[:args.columns]
    unknown = [n for n in names if n not in served.pool.names]
    if unknown or not 1 <= len(names) <= 4:
        served.stop()
        raise SystemExit(f"--models: give 1-4 of {', '.join(served.pool.names)} (got {args.models})")
    args.columns = len(names)
    for name in names:
        served.pool.get(name)  # loaded now: the timings are answers, not loads
    return served, names


def measure(args: argparse.Namespace, ckpt: Path | None) -> None:
    """Run the page and the API in turns; print the medians."""

    from playwright.sync_api import sync_playwright

    from lmlab.serve.server import start_server

    served, names = served_columns(args, ckpt)
    server = start_server(served)
    common = {"stream": True, "temperature": 0.0, "max_tokens": args.max_tokens}
    if args.mode == "chat":
        path = "/v1/chat/completions"
        bodies = [{"model": n, "messages": [{"role": "user", "content": args.prompt}], "logprobs": True,
                   "top_logprobs": 5, **common} for n in names]
    else:
        path = "/v1/completions"
        bodies = [{"model": n, "prompt": args.prompt, "logprobs": 5, **common} for n in names]
    page_ms: list[float] = []
    api_ms: list[float] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page(bypass_csp=True)  # wait_for_function evaluates strings in the page
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('model-0').value !== ''")
            for i in range(4):
                page.select_option(f"#model-{i}", names[i] if i < len(names) else "")
            if args.mode == "completion":
                page.check("input[name=mode][value=completion]")
            page.fill("#max-tokens", str(args.max_tokens))
            page.fill("#temperature", "0")
            api_ttfts(server.url, bodies, path)  # warm-up: the first request pays one-off costs
            page_ttfts(page, args.prompt, args.columns, 120_000)
            for _ in range(args.repeats):
                page_ms += page_ttfts(page, args.prompt, args.columns, 120_000)
                api_ms += api_ttfts(server.url, bodies, path)
            browser.close()
    finally:
        server.stop()
    result = {"models": names, "mode": args.mode, "columns": args.columns, "max_tokens": args.max_tokens,
              "repeats": args.repeats,
              "page_ttft_ms_median": round(statistics.median(page_ms), 1),
              "page_ttft_ms_range": [round(min(page_ms), 1), round(max(page_ms), 1)],
              "api_ttft_ms_median": round(statistics.median(api_ms), 1),
              "api_ttft_ms_range": [round(min(api_ms), 1), round(max(api_ms), 1)]}
    result["page_overhead_ms"] = round(result["page_ttft_ms_median"] - result["api_ttft_ms_median"], 1)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.columns} columns ({', '.join(dict.fromkeys(names))}), {args.mode}, {args.max_tokens} "
              f"tokens, {args.repeats} repeats: TTFT page {result['page_ttft_ms_median']} ms "
              f"({result['page_ttft_ms_range'][0]}-{result['page_ttft_ms_range'][1]}), API "
              f"{result['api_ttft_ms_median']} ms ({result['api_ttft_ms_range'][0]}-"
              f"{result['api_ttft_ms_range'][1]}), page overhead {result['page_overhead_ms']} ms "
              "(the issue asks <= 50 ms)")


if __name__ == "__main__":
    main()
