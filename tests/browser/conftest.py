"""Fixtures of the browser tests: the system Chromium (``/usr/bin/chromium``, Debian's package) driven by
playwright's Python package, and a real ``lmlab serve`` server on a free loopback port with two
different tiny models (a GPT-2-style and a LLaMA-style decoder, each with its own tokenizer), slowed
to about 10 ms a decode step, so a stream lasts long enough to be watched and stopped.

Nothing downloads a browser: without Chromium or playwright every test here skips with the reason."""

from __future__ import annotations

import importlib.util
import json
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serve.conftest import make_gpt2_run, make_run

CHROMIUM = Path("/usr/bin/chromium")
GPT, LLAMA = "gpt", "llama"  # the served names, in /v1/models's order (the page's default columns)
NAMES = (GPT, LLAMA)
STEP_S = {"now": 0.01}  # the sleep of each forward pass; the Stop tests raise it (see ``slow_steps``)
LOAD_S = 0.6  # each model load sleeps this long, so the page's "loading" notice can be seen


def missing() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium chromium-driver)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is missing (pip install playwright; no `playwright install` needed)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this folder ``browser`` and skip them all, with the reason, when Chromium or
    playwright is missing."""
    here = Path(__file__).parent
    reason = missing()
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def serve_models(ckpts: list[str], max_loaded: int, runs: Path | None = None, load_s: float = 0.0,
                 slow: bool = True):
    """The :class:`~lmlab.serve.app.Served` of ``ckpts`` (``--ckpt`` items, or every run under ``runs``
    when empty) as ``lmlab serve`` builds it, except that nothing is loaded yet, each load sleeps
    ``load_s`` and (``slow``) every loaded model's forward pass sleeps ``STEP_S["now"]`` seconds."""
    from lmlab.serve.app import Served
    from lmlab.serve.pool import ModelPool
    from lmlab.serve.server import ServeConfig, load_model, model_specs

    cfg = ServeConfig(ckpt=ckpts, api_key=None, max_loaded=max_loaded, runs=runs)

    def load(spec):
        time.sleep(load_s)
        model = load_model(spec, cfg)
        if slow:
            model.engine.model.register_forward_pre_hook(lambda *_: time.sleep(STEP_S["now"]))
        return model

    pool = ModelPool(model_specs(cfg), load, cfg.max_loaded, busy=lambda m: any(m.engine.load().values()))
    return Served(api_key=None, runs=runs, pool=pool)


def png(width: int = 4, height: int = 3) -> bytes:
    """A real (decodable) PNG of ``width`` x ``height`` grey pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


REPORT_XSS = "<script>alert(1)</script> and <img src=x onerror=alert(2)>"


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> Path:
    """The runs folder: the two tiny models, a lineage report with its plot (a real PNG) and a report
    whose text is markup."""
    root = tmp_path_factory.mktemp("browser-runs")
    make_gpt2_run(root / GPT, block_size=512)
    make_run(root / LLAMA, block_size=512)
    (root / "lineage").mkdir()
    (root / "lineage" / "report.md").write_text(
        "# The lineage\n\n| model | val bpb |\n|---|---:|\n| gpt | 2.5 |\n\n![the plot](lineage.png)\n\n"
        "[the other report](../markup/)\n", encoding="utf-8")
    (root / "lineage" / "lineage.png").write_bytes(png())
    (root / "markup").mkdir()
    (root / "markup" / "report.md").write_text(f"# Markup\n\n{REPORT_XSS}\n\n<script>alert(3)</script>\n",
                                               encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def served(runs):
    """The served two models (both in memory, no API key) and the runs folder's reports."""
    served = serve_models([f"{n}={runs / n}" for n in NAMES], max_loaded=2, runs=runs)
    for name in NAMES:
        served.pool.get(name)
    return served


@pytest.fixture
def slow_steps() -> Iterator[None]:
    """50 ms a decode step during the test: the tiny models' greedy answers (hundreds of tokens) then
    last seconds, so Stop surely comes before their end."""
    STEP_S["now"] = 0.05
    yield
    STEP_S["now"] = 0.01


@pytest.fixture(scope="session")
def server(served) -> Iterator:
    """The running server of :func:`served` (its ``url``)."""
    from lmlab.serve.server import start_server

    running = start_server(served)
    yield running
    running.stop()


def health(server) -> dict:
    """The server's ``/health``: requests ``running`` and ``waiting``, summed over every model."""
    return json.load(urllib.request.urlopen(server.url + "/health", timeout=10))


def wait_idle(server, seconds: float = 10.0) -> dict:
    """Poll ``/health`` until no model runs or queues a request (or ``seconds`` passed); return the
    last counts."""
    end = time.monotonic() + seconds
    while True:
        h = health(server)
        load = {"running": h["running"], "waiting": h["waiting"]}
        if not any(load.values()) or time.monotonic() > end:
            return load
        time.sleep(0.05)


@pytest.fixture(scope="session")
def browser() -> Iterator:
    """A headless system Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


def open_page(browser, url: str, ready: str = "document.getElementById('model-0').value !== ''",
              **context_args):
    """A fresh page on the playground at ``url``, once the JavaScript ``ready`` is true (by default: its
    model list is loaded); ``page.dialogs`` collects every dialog (alert, confirm, prompt) it opened.
    The page's Content-Security-Policy is bypassed (playwright's ``wait_for_function`` evaluates its
    strings in the page); test_csp.py drives the page under it."""
    context = browser.new_context(**{"viewport": {"width": 1280, "height": 800}, "bypass_csp": True,
                                     **context_args})
    pg = context.new_page()
    pg.dialogs = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.goto(url + "/")
    pg.wait_for_function(ready, timeout=10_000)
    return pg


@pytest.fixture
def page(browser, server) -> Iterator:
    """A fresh page on the playground of :func:`server`."""
    pg = open_page(browser, server.url)
    yield pg
    pg.context.close()
