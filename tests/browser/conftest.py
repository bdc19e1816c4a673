"""Fixtures of the browser tests: the system Chromium (``/usr/bin/chromium``, Debian's package) driven by
playwright's Python package, and a real ``lmlab serve`` server on a free loopback port with a tiny model
slowed to about 10 ms a decode step, so a stream lasts long enough to be watched and stopped.

Nothing downloads a browser: without Chromium or playwright every test here skips with the reason."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serve.conftest import make_run

CHROMIUM = Path("/usr/bin/chromium")
NAME = "tiny"
STEP_S = {"now": 0.01}  # the sleep of each forward pass; the Stop tests raise it (see ``slow_steps``)


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


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """The :class:`~lmlab.serve.app.Served` of a tiny run (block 512, no API key) whose every forward
    pass sleeps ``STEP_S["now"]`` seconds."""
    from lmlab.serve.server import ServeConfig, build

    run = make_run(tmp_path_factory.mktemp("browser-run"), block_size=512)
    served = build(ServeConfig(ckpt=run, api_key=None, served_name=NAME))
    (model,) = served.pool.in_memory().values()
    model.engine.model.register_forward_pre_hook(lambda *_: time.sleep(STEP_S["now"]))
    return served


@pytest.fixture
def slow_steps() -> Iterator[None]:
    """50 ms a decode step during the test: the tiny model's greedy answers (about 100 tokens) then
    last seconds, so Stop surely comes before their end."""
    STEP_S["now"] = 0.05
    yield
    STEP_S["now"] = 0.01


@pytest.fixture(scope="session")
def server(served) -> Iterator:
    """The running server of :func:`served` (its ``url`` and ``engine``)."""
    from lmlab.serve.server import start_server

    running = start_server(served)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator:
    """A headless system Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture
def page(browser, server) -> Iterator:
    """A fresh page on the playground, its model list loaded; ``page.dialogs`` collects every dialog
    (alert, confirm, prompt) the page opened."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    pg.dialogs = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.goto(server.url + "/")
    pg.wait_for_function("document.getElementById('model-0').value !== ''", timeout=10_000)
    yield pg
    context.close()
