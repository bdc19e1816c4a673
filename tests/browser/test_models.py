"""Models the server unloaded (``--max-loaded``) in the page: a column whose model is not in memory
says it is loading, and why, until the answer starts; then the model cards are listed again. Two
columns on a server with room for one model both answer (the model one loads is not unloaded for the
other before its request reached the engine)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser.conftest import GPT, LLAMA, NAMES, open_page, serve_models


@pytest.fixture
def one_at_a_time(runs) -> Iterator:
    """A server with the two models and room for one (``--max-loaded 1``): gpt loaded, each load slow."""
    from lmlab.serve.server import start_server

    served = serve_models([f"{n}={runs / n}" for n in NAMES], max_loaded=1, load_s=0.6)
    served.pool.get(GPT)
    running = start_server(served)
    yield running
    running.stop()


def ask(page, model: str, second: str = "") -> None:
    """Send "Hi" to ``model`` (and ``second`` in a second column)."""
    page.select_option("#model-0", model)
    page.select_option("#model-1", second)
    page.fill("#max-tokens", "4")
    page.fill("#prompt", "Hi")
    page.press("#prompt", "Enter")


def test_a_model_not_in_memory_shows_a_loading_notice_and_its_card_is_refreshed(browser, one_at_a_time):
    page = open_page(browser, one_at_a_time.url)
    try:
        assert page.eval_on_selector_all("#model-0 option", "os => os.map(o => o.value)")[1:] == [GPT, LLAMA]
        ask(page, LLAMA)  # never loaded yet
        notice = page.locator(".column .loading")
        notice.wait_for(state="visible", timeout=5_000)
        assert notice.inner_text() == f"loading {LLAMA} (first use)…"
        assert "not loaded" in page.inner_text(".column .card")
        page.wait_for_function("document.querySelector('.column').dataset.state === 'done'", timeout=20_000)
        assert notice.count() == 0
        page.wait_for_function("!document.querySelector('.column .card').textContent.includes('not loaded')")

        ask(page, GPT)  # unloaded to make room for llama
        notice.wait_for(state="visible", timeout=5_000)
        assert notice.inner_text() == f"loading {GPT} (unloaded to free memory)…"
        assert "not loaded (unloaded to free memory)" in page.inner_text(".column .card")
        page.wait_for_function("document.querySelector('.column').dataset.state === 'done'", timeout=20_000)
        page.wait_for_function("!document.querySelector('.column .card').textContent.includes('not loaded')")
        assert page.locator(".column .tok").count() >= 1

        ask(page, GPT, LLAMA)  # the second column's model was unloaded for gpt: it loads while gpt answers
        second = page.locator(".column >> nth=1")
        second.locator(".loading").wait_for(state="visible", timeout=5_000)
        assert second.locator(".loading").inner_text() == f"loading {LLAMA} (unloaded to free memory)…"
        assert page.locator(".column >> nth=0 >> .loading").count() == 0
        page.wait_for_function("[...document.querySelectorAll('.column')].every(c => c.dataset.state === "
                               "'done') && ![...document.querySelectorAll('.column .card')]"
                               ".some(c => c.textContent.includes('not loaded'))", timeout=20_000)
        assert page.locator(".column .loading").count() == 0 and page.dialogs == []
    finally:
        page.context.close()
