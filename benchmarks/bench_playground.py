"""Does the playground page keep up? Time to first token as the page sees it against the API's own,
with ``--columns`` models streaming at once.

One in-process ``lmlab serve`` of ``--ckpt RUN`` (default: a random tiny LLaMA with a character
tokenizer, written to a temporary folder) on a free loopback port; headless system Chromium
(``/usr/bin/chromium``, driven by playwright's Python package). Each repeat runs the same chat request
(greedy, ``logprobs`` with ``top_logprobs: 5``, ``--max-tokens`` new tokens) in ``--columns`` columns,
once from the page (its TTFT: from the column's creation, before its ``fetch``, to the first token put
into the page) and once from Python threads that send the same requests at once (TTFT: from sending to
the first chunk that carries a token). The runs alternate (page, API, page, ...), so a machine that
gets busier moves both alike. Reported: the median TTFT of each (ms, over every column of every
repeat) and the page's overhead (page - API); the issue asks for at most 50 ms with 4 columns.
Without Chromium or playwright it says so and exits 0.

    python benchmarks/bench_playground.py --ckpt runs/lineage/gpt2 --columns 4 --repeats 5 --json
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


def api_ttfts(url: str, body: dict, columns: int) -> list[float]:
    """Send ``columns`` streaming chat requests at once; return each one's time to its first token (ms)."""
    out: list[float | None] = [None] * columns
    start = threading.Barrier(columns)

    def one(i: int) -> None:
        req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
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
    ap.add_argument("--ckpt", type=Path, default=None, help="the run to serve (default: a random tiny one)")
    ap.add_argument("--columns", type=int, default=4, help="models streaming at once (1-4)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if not 1 <= args.columns <= 4:
        raise SystemExit("--columns: give 1 to 4")
    if not Path(CHROMIUM).exists() or importlib.util.find_spec("playwright") is None:
        print(f"skipped: needs {CHROMIUM} (apt-get install chromium) and the playwright package")
        return
    with tempfile.TemporaryDirectory() as tmp:
        measure(args, args.ckpt or tiny_run(Path(tmp)))


def measure(args: argparse.Namespace, ckpt: Path) -> None:
    """Run the page and the API in turns on ``ckpt``; print the medians."""

    from playwright.sync_api import sync_playwright

    from lmlab.serve.server import ServeConfig, build, start_server

    name = "model"
    server = start_server(build(ServeConfig(ckpt=ckpt, api_key=None, served_name=name)))
    body = {"model": name, "messages": [{"role": "user", "content": args.prompt}], "stream": True,
            "logprobs": True, "top_logprobs": 5, "temperature": 0.0, "max_tokens": args.max_tokens}
    page_ms: list[float] = []
    api_ms: list[float] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page(bypass_csp=True)  # wait_for_function evaluates strings in the page
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('model-0').value !== ''")
            for i in range(args.columns):
                page.select_option(f"#model-{i}", name)
            page.fill("#max-tokens", str(args.max_tokens))
            page.fill("#temperature", "0")
            api_ttfts(server.url, body, args.columns)  # warm-up: the first request pays one-off costs
            page_ttfts(page, args.prompt, args.columns, 120_000)
            for _ in range(args.repeats):
                page_ms += page_ttfts(page, args.prompt, args.columns, 120_000)
                api_ms += api_ttfts(server.url, body, args.columns)
            browser.close()
    finally:
        server.stop()
    result = {"columns": args.columns, "max_tokens": args.max_tokens, "repeats": args.repeats,
              "page_ttft_ms_median": round(statistics.median(page_ms), 1),
              "api_ttft_ms_median": round(statistics.median(api_ms), 1)}
    result["page_overhead_ms"] = round(result["page_ttft_ms_median"] - result["api_ttft_ms_median"], 1)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.columns} columns, {args.max_tokens} tokens, {args.repeats} repeats: TTFT page "
              f"{result['page_ttft_ms_median']} ms, API {result['api_ttft_ms_median']} ms, "
              f"page overhead {result['page_overhead_ms']} ms (the issue asks <= 50 ms)")


if __name__ == "__main__":
    main()
