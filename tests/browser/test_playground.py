"""The playground in real Chromium against a real server with two different tiny models: streamed
columns (each its own model's answer), Stop, the token view's alternatives, "score this text", escaping
of server text, a failing column, the API key and each column's own sampling settings."""

from __future__ import annotations

import json
import math
import re
import urllib.request

from tests.browser.conftest import GPT, LLAMA, health, wait_idle

XSS = "<img src=x onerror=alert(1)> hi"


def send(page, prompt: str, mode: str = "chat", max_tokens: int = 24, temperature: float = 0.0,
         second: str | None = LLAMA) -> None:
    """Fill the form (column 1 keeps its model, ``second`` in column 2, None: no second column) and
    press Enter."""
    page.select_option("#model-1", second or "")
    page.check(f"input[name=mode][value={mode}]")
    if mode != "score":
        page.fill("#max-tokens", str(max_tokens))
        page.fill("#temperature", str(temperature))
    page.fill("#prompt", prompt)
    page.press("#prompt", "Enter")


def wait_states(page, *states: str, n: int = 2, timeout: float = 20_000) -> None:
    """Wait until ``n`` columns exist and each one's state is among ``states``."""
    page.wait_for_function(
        "([n, states]) => { const c = [...document.querySelectorAll('.column')];"
        " return c.length === n && c.every(x => states.includes(x.dataset.state)); }",
        arg=[n, list(states)], timeout=timeout)


def column_texts(page) -> list[str]:
    return page.eval_on_selector_all(".column .tokens", "els => els.map(e => e.textContent)")


def post(server, path: str, body: dict) -> dict:
    """POST ``body`` (JSON) to the server's ``path``; return the JSON answer."""
    req = urllib.request.Request(server.url + path, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=30))


def visible(text: str) -> str:
    """``text`` as the token view shows it: control characters as their Unicode control pictures."""
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f]",
                  lambda m: chr(0x2421 if m[0] == "\x7f" else 0x2400 + ord(m[0])), text)


def test_two_columns_stream_their_own_models_answers(page, server):
    page.evaluate("""() => { window.seen = [];
        new MutationObserver(() => window.seen.push(document.querySelectorAll('.column .tok').length))
          .observe(document.getElementById('columns'), {childList: true, subtree: true}); }""")
    send(page, "Hello there", max_tokens=24)
    wait_states(page, "done")
    assert page.eval_on_selector_all(".column h2", "els => els.map(e => e.textContent)") == [GPT, LLAMA]
    # greedy: each column says what its own model says through the API
    want = [post(server, "/v1/chat/completions", {"model": name, "max_tokens": 24, "temperature": 0,
                                                  "messages": [{"role": "user", "content": "Hello there"}]})
            for name in (GPT, LLAMA)]
    texts = column_texts(page)
    assert texts == [visible(w["choices"][0]["message"]["content"]) for w in want]
    assert texts[0] != texts[1] and all(texts)
    counts = page.eval_on_selector_all(".column", "els => els.map(e => Number(e.dataset.tokens))")
    assert counts == [w["usage"]["completion_tokens"] for w in want] == [24, 24]
    # the tokens arrived in many steps, not in one piece at the end
    seen = page.evaluate("window.seen")
    assert len({n for n in seen if 0 < n < 48}) >= 5, seen
    stats = page.inner_text(".column .stats")
    assert "TTFT" in stats and "tok/s" in stats and "24 tokens" in stats and "mean log-prob" in stats


def test_stop_cancels_every_stream_and_frees_the_slots(page, server, slow_steps):
    send(page, "Once upon a time", max_tokens=400)
    page.wait_for_function("(() => { const c = [...document.querySelectorAll('.column')];"
                           " return c.length === 2 && c.every(x => Number(x.dataset.tokens) >= 3); })()",
                           timeout=20_000)
    assert health(server)["running"] == 2  # one request in each model's engine
    page.click("#stop-button")
    wait_states(page, "stopped")
    assert wait_idle(server) == {"running": 0, "waiting": 0}
    counts = page.eval_on_selector_all(".column", "els => els.map(e => Number(e.dataset.tokens))")
    assert all(3 <= c < 400 for c in counts), counts


def test_escape_stops_too(page, server, slow_steps):
    send(page, "Once upon a time", mode="completion", max_tokens=400, second=None)
    page.wait_for_function("Number(document.querySelector('.column')?.dataset.tokens || 0) >= 3",
                           timeout=20_000)
    page.keyboard.press("Escape")
    wait_states(page, "stopped", n=1)
    assert wait_idle(server) == {"running": 0, "waiting": 0}


def test_hover_and_focus_show_top_alternatives(page):
    send(page, "ROMEO:", mode="completion", max_tokens=8, second=None)
    wait_states(page, "done", n=1)
    first = page.locator(".column .tok").first
    first.hover()
    tip = page.locator("#tooltip")
    tip.wait_for(state="visible")
    rows = tip.locator("tr")
    assert rows.count() == 5
    assert all(t.strip().endswith("%") for t in rows.locator("td.p").all_inner_texts())
    assert page.locator("#tooltip tr.chosen").count() == 1  # greedy: the chosen token is the top one
    page.mouse.move(0, 0)
    tip.wait_for(state="hidden")
    page.locator(".column .tok").nth(1).focus()
    tip.wait_for(state="visible")
    assert "p=" in tip.inner_text()


def test_score_shows_bits_per_byte_and_escapes_the_text(page, server):
    send(page, XSS, mode="score")
    wait_states(page, "done")
    assert page.dialogs == []
    assert page.locator("img").count() == 0
    assert column_texts(page) == [XSS, XSS]  # the markup shows as text, token by token
    assert "bits/byte" in page.inner_text(".column .stats")
    shown = [float(page.get_attribute(f".column >> nth={i}", "data-bpb")) for i in range(2)]
    for name, bpb in zip((GPT, LLAMA), shown, strict=True):
        body = {"model": name, "prompt": XSS, "echo": True, "logprobs": 1, "max_tokens": 0}
        lp = post(server, "/v1/completions", body)["choices"][0]["logprobs"]
        # the first token is not predicted: its log-prob is null and its byte is not counted
        assert lp["token_logprobs"][0] is None
        expected = -sum(lp["token_logprobs"][1:]) / math.log(2) / len(XSS[1:].encode())
        assert abs(bpb - expected) < 1e-3
    assert shown[0] != shown[1]
    page.locator(".column .tok").nth(3).hover()
    assert "bits" in page.inner_text("#tooltip")


def test_a_failing_model_shows_its_error_while_the_other_goes_on(page):
    page.evaluate("""() => { const s = document.getElementById('model-1');
        s.append(new Option('no-such-model', 'no-such-model')); }""")
    send(page, "Hello", second="no-such-model", max_tokens=12)
    wait_states(page, "done", "error")
    states = page.eval_on_selector_all(".column", "els => els.map(e => e.dataset.state)")
    assert states == ["done", "error"]
    assert "no-such-model" in page.inner_text(".column >> nth=1")
    assert "404" in page.inner_text(".column >> nth=1 >> .error")
    assert column_texts(page)[0]


def test_api_key_is_asked_for_and_kept_in_page_memory(browser, server, served):
    served.api_key = "sk-browser"
    try:
        context = browser.new_context(bypass_csp=True)  # see open_page
        page = context.new_page()
        sent = []
        page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
        page.goto(server.url + "/")  # the page and its assets need no key
        page.wait_for_function("document.getElementById('notice').textContent.includes('API key')")
        page.fill("#api-key", "sk-browser")
        page.press("#api-key", "Tab")  # change: the models are listed again, with the key
        page.wait_for_function("document.getElementById('model-0').value !== ''", timeout=10_000)
        send(page, "Hi", second=None, max_tokens=4)
        wait_states(page, "done", n=1)
        api = [(u, a) for u, a in sent if "/v1/" in u]
        assert api[-1] == (server.url + "/v1/chat/completions", "Bearer sk-browser")
        assert all(u.startswith(server.url + "/") for u, _ in sent)
        stored = page.evaluate("() => JSON.stringify([{...localStorage}, {...sessionStorage},"
                               " document.cookie])")
        assert "sk-browser" not in stored
        context.close()
    finally:
        served.api_key = None


def rename(served, old: str, new: str) -> None:
    """Serve the model ``old`` as ``new`` (its run folder could have been named so)."""
    from lmlab.serve.pool import ModelSpec

    pool = served.pool
    pool.specs = {new if n == old else n: ModelSpec(new, s.path) if n == old else s
                  for n, s in pool.specs.items()}
    model = pool._loaded.pop(old)  # noqa: SLF001 - the test renames a loaded model in place
    model.name = new
    pool._loaded[new] = model


def test_a_model_named_like_markup_shows_as_text(page, server, served):
    rename(served, GPT, XSS)
    try:
        page.click("#load-models")
        page.wait_for_function("([...document.getElementById('model-0').options].some(o => o.value === "
                               f"{json.dumps(XSS)}))")
        page.select_option("#model-0", XSS)
        send(page, "Hi", second=XSS, max_tokens=4)
        wait_states(page, "done")
        assert page.locator(".column h2").all_inner_texts() == [XSS, XSS]
    finally:
        rename(served, XSS, GPT)
    assert page.dialogs == [] and page.locator("img").count() == 0


def test_generated_markup_and_its_alternatives_show_as_text(page):
    """The token view's escaping, whatever the tokenizer: the stream is a crafted answer whose tokens and
    alternatives are HTML (the tiny model's char tokenizer cannot make a whole tag one token)."""
    def chunk(token: str, alts: list[str]) -> str:
        top = [{"token": a, "logprob": -1.0 - i, "bytes": list(a.encode())} for i, a in enumerate(alts)]
        lp = {"content": [{"token": token, "logprob": -1.0, "bytes": list(token.encode()),
                           "top_logprobs": top}]}
        return "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": token}, "logprobs": lp,
                                                   "finish_reason": None}]}) + "\n\n"

    markup = ["<img src=x onerror=alert(1)>", "<script>alert(2)</script>", "<b>bold</b>"]
    body = chunk(markup[0], markup) + chunk(markup[2], markup[::-1]) + "data: [DONE]\n\n"
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=body))
    send(page, "Hi", second=None)
    wait_states(page, "done", n=1)
    assert column_texts(page) == [markup[0] + markup[2]]
    page.locator(".column .tok").first.hover()
    page.locator("#tooltip").wait_for(state="visible")
    assert [json.loads(t) for t in page.locator("#tooltip td:not(.p)").all_inner_texts()] == markup
    assert page.dialogs == []
    assert page.locator("img, b, #columns script, #tooltip script").count() == 0


def test_closing_the_tab_cancels_its_streams(browser, server, slow_steps):
    context = browser.new_context(bypass_csp=True)  # see open_page
    page = context.new_page()
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model-0').value !== ''", timeout=10_000)
    send(page, "Once upon a time", max_tokens=400)
    page.wait_for_function("Number(document.querySelector('.column')?.dataset.tokens || 0) >= 3",
                           timeout=20_000)
    assert health(server)["running"] == 2
    context.close()
    assert wait_idle(server) == {"running": 0, "waiting": 0}


def test_the_controls_make_the_request(page):
    bodies = []
    page.on("request", lambda r: bodies.append(r.post_data_json) if r.method == "POST" else None)
    page.fill("#system", "You are terse.")
    page.fill("#top-p", "0.9")
    page.fill("#top-k", "7")
    page.fill("#seed", "3")
    page.fill("#stop", r"\n\n | END")
    send(page, "Hi", second=None, max_tokens=5, temperature=0.7)
    wait_states(page, "done", n=1)
    assert bodies == [{"model": GPT, "stream": True, "logprobs": True, "top_logprobs": 5,
                       "messages": [{"role": "system", "content": "You are terse."},
                                    {"role": "user", "content": "Hi"}],
                       "temperature": 0.7, "top_p": 0.9, "top_k": 7, "max_tokens": 5, "seed": 3,
                       "stop": ["\n\n", "END"]}]
    bodies.clear()
    send(page, "Hi", mode="completion", second=None, max_tokens=5)
    wait_states(page, "done", n=1)
    assert bodies[0]["prompt"] == "Hi" and bodies[0]["logprobs"] == 5 and "messages" not in bodies[0]


def test_model_cards_show_as_text(page, server):
    """The model card of ``/v1/models``'s ``lmlab`` object shows under each column's name, escaped."""
    card = {"family": "<b>llama</b>", "parameters": 12345, "context": 512,
            "tokenizer": {"kind": "<i>char</i>", "vocab_size": 97}, "training_tokens": 1000000,
            "val_bpb": 2.5, "loaded": False}
    models = {"object": "list", "data": [{"id": GPT, "object": "model", "lmlab": card}]}
    page.route("**/v1/models", lambda route: route.fulfill(status=200, json=models))
    page.click("#load-models")
    send(page, "Hi", second=None, max_tokens=3)
    wait_states(page, "done", n=1)
    text = page.inner_text(".column .card")
    assert text.startswith("<b>llama</b> · 12.3k params · 512 context · <i>char</i> tokenizer (97 tokens)"
                           " · 1.00M training tokens · 2.500 val bpb")
    assert "not loaded" in text and page.locator(".column b, .column i").count() == 0


def test_each_column_can_have_its_own_settings(page):
    bodies = []
    page.on("request", lambda r: bodies.append(r.post_data_json) if r.method == "POST" else None)
    page.fill("#seed", "5")
    page.check("#own-1")  # column 2's own settings start as a copy of the shared ones
    assert page.input_value("#seed-1") == "5" and page.is_visible("#settings-1")
    page.fill("#max-tokens-1", "3")
    page.fill("#temperature-1", "0.5")
    send(page, "Hi", max_tokens=6, temperature=0)  # the shared settings: column 1's
    wait_states(page, "done")
    got = {b["model"]: (b["max_tokens"], b["temperature"], b["seed"]) for b in bodies}
    assert got == {GPT: (6, 0, 5), LLAMA: (3, 0.5, 5)}
    counts = page.eval_on_selector_all(".column", "els => els.map(e => Number(e.dataset.tokens))")
    assert 1 <= counts[0] <= 6 and 1 <= counts[1] <= 3
    assert page.locator(".column >> nth=0 >> .settings").count() == 0
    assert "max tokens 3" in page.inner_text(".column >> nth=1 >> .settings")
    page.uncheck("#own-1")  # back to the shared settings
    bodies.clear()
    send(page, "Hi", max_tokens=4, temperature=0)
    wait_states(page, "done")
    assert [(b["max_tokens"], b["temperature"]) for b in bodies] == [(4, 0), (4, 0)]
