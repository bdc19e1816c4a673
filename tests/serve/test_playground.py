"""The playground's routes (no browser): ``/`` and ``/static/...`` are public even with an API key, the
API is not, and nothing outside the static folder can be read through them."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

import pytest


def get(server, path: str, headers: dict | None = None) -> tuple[int, str, bytes]:
    """GET the raw ``path`` (sent as is, not normalised); return status, content type and body."""
    conn = http.client.HTTPConnection(urlsplit(server.url).netloc, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("content-type", ""), resp.read()
    finally:
        conn.close()


def test_the_page_and_its_assets_need_no_key(server):
    status, kind, body = get(server, "/")
    assert status == 200 and kind.startswith("text/html")
    assert b"/static/playground.js" in body and b"/static/playground.css" in body
    status, kind, body = get(server, "/static/playground.js")
    assert status == 200 and "javascript" in kind and b"textContent" in body
    assert get(server, "/static/playground.css")[0] == 200
    assert get(server, "/v1/models")[0] == 401  # the API still wants the key


def test_the_page_runs_only_its_own_script(server):
    conn = http.client.HTTPConnection(urlsplit(server.url).netloc, timeout=10)
    try:
        conn.request("GET", "/")
        csp = conn.getresponse().getheader("content-security-policy", "")
    finally:
        conn.close()
    rules = dict(r.strip().split(" ", 1) for r in csp.split(";"))
    assert rules["script-src"] == "'self'" and rules["default-src"] == "'none'"
    assert rules["img-src"] == "'self' blob:" and rules["style-src"] == "'self'"
    assert "unsafe" not in csp.replace("style-src-attr 'unsafe-inline'", "")


@pytest.mark.parametrize("path", ["/static/../app.py", "/static/..%2fapp.py", "/static/%2e%2e/app.py",
                                  "/static//etc/passwd", "/static/nothing.js"])
def test_nothing_outside_the_static_folder(server, path):
    status, _, body = get(server, path)
    assert status == 404 and b"create_app" not in body and b"root:" not in body


def test_with_a_key_every_route_but_health_and_the_page_needs_it(server):
    """Walk the app's routes (a route added later is covered too): without the key each answers 401,
    except /health, the page and its static files."""
    from starlette.routing import Mount

    public = {"/health", "/"}
    seen = []
    for route in server.loading.app.routes:
        if isinstance(route, Mount):
            assert route.path == "/static"  # the page's files, public by design
            continue
        path = route.path.replace("{rel:path}", "lineage/report.md")
        for method in sorted(route.methods - {"HEAD"}):
            conn = http.client.HTTPConnection(urlsplit(server.url).netloc, timeout=10)
            try:
                conn.request(method, path, body=b"{}" if method == "POST" else None,
                             headers={"Content-Type": "application/json"})
                status = conn.getresponse().status
            finally:
                conn.close()
            seen.append(path)
            assert (status != 401) if path in public else (status == 401), (method, path, status)
    assert {"/v1/models", "/v1/completions", "/v1/chat/completions", "/metrics", "/tokenize",
            "/reports"} <= set(seen)
