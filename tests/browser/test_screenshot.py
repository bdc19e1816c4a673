"""The README's screenshot (docs/playground.png): the playground comparing the lineage models of
``make demo``. Set ``LMLAB_LINEAGE_RUNS`` to the lineage folder (runs/lineage; it is only read) and
optionally ``LMLAB_SCREENSHOT`` to the PNG to write (default docs/playground.png):

    LMLAB_LINEAGE_RUNS=runs/lineage make test-browser

Every model in the folder is served (``--runs``); up to four columns in lineage order get "ROMEO:"
in raw completion mode, greedy, 48 tokens, with one token's alternatives shown. The models are
loaded before the prompt is sent, so the columns' times to first token are the answers' own (a
model's first use otherwise waits for its load, and its column says so). A model the server
cannot run shows its error in its column."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser.conftest import open_page, serve_models

LINEAGE = ("ngram", "nplm", "lstm", "gpt2", "llama")  # the order of the columns
KEEP = ("llama", "gpt2", "lstm", "ngram", "nplm")  # which four, when there are five


def columns(names: list[str]) -> list[str]:
    """Up to four of the served ``names`` (run folders named after their family), in lineage order."""
    known = [n for n in names if n.split(".")[-1] in LINEAGE]
    kept = sorted(known, key=lambda n: KEEP.index(n.split(".")[-1]))[:4]
    return sorted(kept, key=lambda n: LINEAGE.index(n.split(".")[-1]))


def test_columns_follow_the_lineage():
    assert columns(["gpt2", "llama", "lstm", "nplm"]) == ["nplm", "lstm", "gpt2", "llama"]
    assert columns(["gpt2", "llama", "lstm", "ngram", "nplm", "data"]) == ["ngram", "lstm", "gpt2", "llama"]


def test_screenshot_of_the_lineage(browser):
    runs = os.environ.get("LMLAB_LINEAGE_RUNS")
    if not runs:
        pytest.skip("set LMLAB_LINEAGE_RUNS to a `make demo` lineage folder (runs/lineage) to take "
                    "docs/playground.png")
    from lmlab.serve.server import start_server

    shot = Path(os.environ.get("LMLAB_SCREENSHOT") or "docs/playground.png")
    served = serve_models([], max_loaded=5, runs=Path(runs), slow=False)
    server = start_server(served)
    try:
        names = columns(served.pool.names)
        assert names, f"no lineage model ({', '.join(LINEAGE)}) under {runs}: {served.pool.names}"
        for name in names:  # loaded before the page opens: each column's TTFT is its answer's, not a load's
            served.pool.get(name)
        page = open_page(browser, server.url, viewport={"width": 1500, "height": 1000})
        for i in range(4):
            page.select_option(f"#model-{i}", names[i] if i < len(names) else "")
        page.check("input[name=mode][value=completion]")
        page.fill("#max-tokens", "48")
        page.fill("#temperature", "0")
        page.fill("#prompt", "ROMEO:")
        page.press("#prompt", "Enter")
        page.wait_for_function(
            "n => { const c = [...document.querySelectorAll('.column')];"
            " return c.length === n && c.every(x => ['done', 'error'].includes(x.dataset.state)); }",
            arg=len(names), timeout=120_000)
        streamed = page.locator(".column[data-state=done] .tok")
        if streamed.count() > 5:
            streamed.nth(5).hover()  # the token view: one token's top-5 alternatives
            page.locator("#tooltip").wait_for(state="visible")
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        page.context.close()
    finally:
        server.stop()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
