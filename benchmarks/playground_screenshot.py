"""Screenshot of the playground (the README's docs/playground.png) on the lineage models of `make demo`:

    lmlab serve --runs runs/lineage --max-loaded 4 --port 8000 &
    python benchmarks/playground_screenshot.py http://127.0.0.1:8000 docs/playground.png

Debian's Chromium (/usr/bin/chromium) driven by Playwright; ROMEO: in raw-completion mode, greedy,
48 tokens, in up to four columns, with one token's alternatives shown."""
import sys
import time

from playwright.sync_api import sync_playwright

url, out = sys.argv[1], sys.argv[2]
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium")
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('model-0').options.length >= 2", timeout=20000)
    names = page.eval_on_selector("#model-0", "s => [...s.options].map(o => o.value)")
    print("models:", names)
    for i, name in enumerate([n for n in names if n][:4]):
        page.select_option(f"#model-{i}", name)
    page.check("input[name=mode][value=completion]")
    page.fill("#max-tokens", "48")
    page.fill("#temperature", "0")
    page.fill("#prompt", "ROMEO:")
    page.press("#prompt", "Enter")
    page.wait_for_function("[...document.querySelectorAll('.column')].length >= 2 && "
                           "[...document.querySelectorAll('.column')].every(c => "
                           "c.dataset.state !== 'streaming' && c.dataset.state !== 'waiting')",
                           timeout=120000)
    time.sleep(0.5)
    tok = page.locator(".column .tokens span").nth(5)
    tok.hover()
    time.sleep(0.3)
    page.screenshot(path=out, full_page=True)
    print(page.eval_on_selector_all(".column", "cs => cs.map(c => c.dataset.state)"))
    browser.close()
