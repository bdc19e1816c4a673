"""The reports of ``--runs`` opened inside the playground: the list, a report with its plot (fetched with
the API key when the server has one, the key kept in page memory only), and a report whose text is
markup, shown as text with nothing run."""

from __future__ import annotations

from tests.browser.conftest import REPORT_XSS, open_page

ASKS_FOR_KEY = "document.getElementById('notice').textContent.includes('API key')"
DONE = "document.getElementById('report').dataset.state === 'done'"


def open_lineage(page) -> None:
    """Open the reports list from the header, then the lineage report from it."""
    page.click("#open-reports")
    page.wait_for_function(DONE, timeout=10_000)
    assert page.inner_text("#report h1") == "Reports"
    page.click("#report a:text('lineage')")
    page.wait_for_function(DONE + " && document.querySelector('#report h1')?.textContent === 'The lineage'",
                           timeout=10_000)


def plot_loaded(page) -> bool:
    return page.eval_on_selector("#report img", "i => i.complete && i.naturalWidth === 4 && "
                                                "i.src.startsWith('blob:')")


def test_a_report_opens_in_the_page_with_its_plot(page):
    open_lineage(page)
    assert page.locator("#report img").count() == 1 and plot_loaded(page)
    assert page.inner_text("#report table td >> nth=0") == "gpt"
    page.click("#reports-close")
    assert not page.is_visible("#reports-view")


def test_reports_need_and_get_the_key(browser, server, served):
    served.api_key = "sk-reports"
    try:
        page = open_page(browser, server.url, ASKS_FOR_KEY)
        sent = []
        page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
        page.click("#open-reports")
        page.wait_for_function("document.getElementById('report').dataset.state === 'error'")
        assert "API key" in page.inner_text("#report .error")
        page.fill("#api-key", "sk-reports")
        sent.clear()
        open_lineage(page)
        assert plot_loaded(page)
        reports = [(u, a) for u, a in sent if "/reports" in u]
        assert [u.split("/reports", 1)[1] for u, _ in reports] == ["", "/lineage/", "/lineage/lineage.png"]
        assert all(a == "Bearer sk-reports" for _, a in reports)
        # the plot is shown from a blob: URL made in the page; everything else went to this server only
        assert all((u.startswith(server.url + "/") or u.startswith("blob:")) and "sk-reports" not in u
                   for u, _ in sent)
        stored = page.evaluate("() => JSON.stringify([{...localStorage}, {...sessionStorage},"
                               " document.cookie])")
        assert "sk-reports" not in stored
        page.context.close()
    finally:
        served.api_key = None


def test_a_report_of_markup_shows_as_text_and_runs_nothing(page):
    open_lineage(page)
    page.click("#report a:text('the other report')")
    page.wait_for_function(DONE + " && document.querySelector('#report h1')?.textContent === 'Markup'",
                           timeout=10_000)
    text = page.inner_text("#report")
    assert REPORT_XSS in text and "<script>alert(3)</script>" in text
    assert page.locator("#report img, #report script, script:not([src])").count() == 0
    assert page.dialogs == []


def test_the_page_rebuilds_a_report_from_safe_parts_only(page):
    """Whatever the server sent (here a crafted page with raw markup), the page keeps text and a short
    list of tags: no script, handler, style, form or javascript: link reaches the page."""
    crafted = ('<!doctype html><html><head><base href="/reports/x/"><script>alert(1)</script></head><body>'
               '<h1 onclick="alert(2)">Crafted</h1><p>text'
               ' <img src=nothing.png onerror="alert(3)" alt="a plot">'
               '<a href="javascript:alert(4)">js link</a> <a href="../lineage/">sibling</a></p>'
               '<svg onload="alert(5)"><text>svg</text></svg><iframe src="/"></iframe>'
               '<form action="/x"><input value="in"></form><style>body{display:none}</style>'
               '<table><tr><td style="text-align:right">1</td>'
               '<td style="text-align:right;background:url(/x)">2</td></tr></table></body></html>')
    page.route("**/reports/crafted", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/html; charset=utf-8"}, body=crafted))
    page.evaluate("() => document.getElementById('open-reports').click()")
    page.wait_for_function(DONE, timeout=10_000)
    page.evaluate("() => { const a = document.querySelector('#report a[data-report]');"
                  " a.dataset.report = '/reports/crafted'; a.click(); }")
    page.wait_for_function(DONE + " && document.querySelector('#report h1')?.textContent === 'Crafted'")
    report = page.locator("#report")
    assert report.locator("script, style, svg, iframe, form, input").count() == 0
    names = page.eval_on_selector_all("#report *", "es => es.flatMap(e => [...e.attributes])"
                                                   ".map(a => a.name)")
    assert [n for n in names if n.startswith("on")] == []
    assert report.locator("a:text('js link')").get_attribute("href") is None
    assert report.locator("a:text('sibling')").get_attribute("data-report") == "/reports/lineage/"
    # the image (a 404 here) says so instead; a cell keeps its alignment, nothing else
    assert report.locator("img").count() == 0 and "a plot" in page.inner_text("#report .error")
    styles = page.eval_on_selector_all("#report td", "els => els.map(e => e.getAttribute('style'))")
    assert styles == ["text-align: right;", None]
    assert page.dialogs == []
