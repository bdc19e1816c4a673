"""The playground under its own Content-Security-Policy (the other browser tests bypass it): streaming,
the token view's tooltip and a report with its plot work with only the page's own script and blob:
images, and the browser reports no violation."""

from __future__ import annotations


def test_the_page_works_under_its_content_security_policy(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    failed = []
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    page.goto(server.url + "/")
    page.locator("#model-0 option:nth-child(2)").wait_for(state="attached")
    page.select_option("#model-1", "")
    page.check("input[name=mode][value=completion]")
    page.fill("#max-tokens", "6")
    page.fill("#prompt", "ROMEO:")
    page.press("#prompt", "Enter")
    page.locator(".column[data-state=done]").wait_for(timeout=20_000)
    page.locator(".column .tok").first.hover()
    page.locator("#tooltip").wait_for(state="visible")
    assert page.locator(".column .tok").first.get_attribute("style").startswith("background")
    page.click("#open-reports")
    page.click("#report a:text('lineage')")
    page.locator("#report h1:text('The lineage')").wait_for(timeout=10_000)
    page.locator("#report img[src^='blob:']").wait_for(timeout=10_000)
    assert page.eval_on_selector("#report img", "i => i.complete && i.naturalWidth") == 4
    assert [u.rsplit("/", 1)[1] for u in failed] == ["favicon.ico"] * len(failed)  # the page has no icon
    assert [p for p in problems if not p.startswith("Failed to load resource")] == []
    context.close()
