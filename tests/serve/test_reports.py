"""Report browsing (lmlab.serve.reports) in the real app: listing, rendering, escaping, files only from
inside the runs folder, and the API key."""

from __future__ import annotations

import http.client
import os
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

import pytest
from fastapi.testclient import TestClient

from lmlab.serve.reports import find_reports, locate, markdown_html
from tests.serve.conftest import API_KEY, NAME

XSS_NAME = "<script>alert(1)</script>"
XSS_TEXT = "<img src=x onerror=alert(1)>"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16  # the route sends the bytes as they are
SECRET = "top secret outside the runs folder"
LINEAGE = """# The lineage: one corpus, one tokenizer, one budget

Corpus `shakespeare`, bpe tokenizer with 4096 tokens.

| model | params | val bpb |
|---|---:|---:|
| ngram | 3.4M | 2.1984 |
| llama | 1.31M | 2.5643 |

Best: **ngram** at 2.1984 bits per byte.

![validation bits per byte against training FLOPs](lineage.png)

See [the results](results.json) and [a script](javascript:alert(1)).
"""


@pytest.fixture(scope="module")
def served(run_dir):
    """The real :class:`Served` of the tiny run, with the API key (its engine stopped at the end)."""
    from lmlab.serve.server import ServeConfig, build

    s = build(ServeConfig(ckpt=run_dir, api_key=API_KEY, served_name=NAME))
    yield s
    s.engine.stop()


@pytest.fixture
def runs(tmp_path) -> Path:
    """A runs folder like the one `make demo` leaves: a lineage report with its plot, an alignment
    report, a run without a report, a run named like a script, and symlinks leading outside."""
    root = tmp_path / "runs"
    (root / "lineage" / "gpt2").mkdir(parents=True)
    (root / "lineage" / "report.md").write_text(LINEAGE, encoding="utf-8")
    (root / "lineage" / "lineage.png").write_bytes(PNG)
    (root / "lineage" / "results.json").write_text('{"best": "ngram"}')
    (root / "align" / "dpo").mkdir(parents=True)
    (root / "align" / "samples.md").write_text("# Alignment\n\nDPO won.\n")  # as `lmlab align frontier`
    (root / "align" / "frontier.png").write_bytes(PNG)
    (root / "plain").mkdir()
    (root / "plain" / "config.yaml").write_text("model: gpt2-tiny\n")
    (root / XSS_NAME).mkdir(parents=True)  # the '/' in it makes two nested folders
    (root / XSS_NAME / "report.md").write_text(f"# {XSS_TEXT}\n\n{XSS_TEXT}\n\n<script>alert(2)</script>\n")
    (root / XSS_NAME / f"{XSS_TEXT}.png").write_bytes(PNG)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    (outside / "report.md").write_text(f"# {SECRET}\n")
    os.symlink(outside / "secret.txt", root / "lineage" / "leak.txt")
    os.symlink(outside, root / "elsewhere")
    os.symlink(root / "lineage" / "lineage.png", root / "align" / "plot.png")  # inside: allowed
    return root


def client(served, runs: Path | None, key: str | None = API_KEY) -> TestClient:
    """A client of the real app on ``runs``, sending ``key``."""
    from lmlab.serve.app import create_app

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return TestClient(create_app(replace(served, runs=runs)), headers=headers)


def test_listing_shows_every_report_and_only_those(served, runs):
    r = client(served, runs).get("/reports")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src" not in r.headers["content-security-policy"]  # no script may run on the page
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert '<a href="/reports/lineage/">lineage</a>' in r.text
    assert "The lineage: one corpus, one tokenizer, one budget" in r.text
    assert '<a href="/reports/align/">align</a> &mdash; Alignment' in r.text
    assert "plain" not in r.text and "elsewhere" not in r.text and SECRET not in r.text
    assert [p.as_posix() for p in find_reports(runs)] == sorted(["align", "lineage", XSS_NAME])


def test_a_lineage_report_renders_with_its_table_and_plot(served, runs):
    c = client(served, runs)
    r = c.get("/reports/lineage/")
    assert r.status_code == 200
    assert '<base href="/reports/lineage/">' in r.text  # relative links resolve inside the run folder
    assert "<title>The lineage: one corpus, one tokenizer, one budget</title>" in r.text
    assert "<th>model</th>" in r.text and '<td style="text-align:right">2.1984</td>' in r.text
    assert "<strong>ngram</strong>" in r.text
    assert '<img src="lineage.png" alt="validation bits per byte against training FLOPs" />' in r.text
    assert '<a href="results.json">the results</a>' in r.text
    assert 'href="javascript:' not in r.text and "[a script](javascript:alert(1))" in r.text  # shown as text
    assert c.get("/reports/lineage").text == r.text  # the base makes the trailing slash optional
    assert c.get("/reports/lineage/report.md").text == r.text
    files = r.text.split("<h2>Files</h2>")[1]
    assert '<a href="results.json">results.json</a>' in files and '<a href="lineage.png">' in files
    assert "leak.txt" not in r.text  # a symlink leading outside is not offered
    assert "<h2>Plots</h2>" not in r.text  # the report shows its only plot itself

    png = c.get("/reports/lineage/lineage.png")
    assert png.status_code == 200 and png.content == PNG and png.headers["content-type"] == "image/png"
    assert png.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in png.headers["content-security-policy"]
    js = c.get("/reports/lineage/results.json")
    assert js.status_code == 200 and js.text == '{"best": "ngram"}'
    assert js.headers["content-type"].startswith("text/plain")
    assert c.get("/reports/align/plot.png").content == PNG  # a symlink that stays inside is served
    align = c.get("/reports/align/").text  # samples.md is the page; the plots it does not name follow it
    assert "<h1>Alignment</h1>" in align
    assert '<h2>Plots</h2><p><img src="frontier.png" alt="frontier.png"></p><p><img src="plot.png"' in align
    assert c.get("/reports/lineage/missing.png").status_code == 404
    assert c.get("/reports/plain/").status_code == 404  # a folder without report.md


def test_names_and_contents_from_runs_are_escaped(served, runs):
    c = client(served, runs)
    listing = c.get("/reports").text
    assert XSS_NAME not in listing and XSS_TEXT not in listing
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in listing
    assert "&lt;img src=x onerror=alert(1)&gt;" in listing
    assert '<a href="/reports/%3Cscript%3Ealert%281%29%3C/script%3E/">' in listing
    page = c.get("/reports/%3Cscript%3Ealert%281%29%3C/script%3E/")
    assert page.status_code == 200
    assert "<script" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert "<title>&lt;img src=x onerror=alert(1)&gt;</title>" in page.text
    assert "<code>&lt;script&gt;alert(1)&lt;/script&gt;/report.md</code>" in page.text
    quoted = "%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.png"  # a file named like an <img> tag
    assert f'<img src="{quoted}" alt="&lt;img src=x onerror' in page.text
    png = c.get(f"/reports/%3Cscript%3Ealert%281%29%3C/script%3E/{quoted}")
    assert png.status_code == 200 and png.content == PNG


def test_markdown_rendering_escapes_html_and_drops_unsafe_links():
    out = markdown_html('<b onclick="x()">hi</b>\n\n[x](javascript:alert(1)) ![y](data:text/html,<script>)\n')
    assert "<b" not in out and "&lt;b onclick=&quot;x()&quot;&gt;hi&lt;/b&gt;" in out
    assert 'href="javascript:' not in out and 'src="data:text/html' not in out


@pytest.mark.parametrize("path", [
    "/reports/../outside/secret.txt", "/reports/lineage/../../outside/secret.txt", "/reports//etc/passwd",
    "/reports/%2Fetc%2Fpasswd", "/reports/%2e%2e/outside/secret.txt", "/reports/..%2Foutside%2Fsecret.txt",
    "/reports/lineage/%2e%2e/%2e%2e/outside/secret.txt", "/reports/%2E%2E%2Foutside/report.md",
    "/reports/lineage/leak.txt", "/reports/elsewhere/", "/reports/elsewhere/secret.txt",
    "/reports/elsewhere/report.md", "/reports/lineage/..",
    "/reports/lineage%2F..%2F..%2Foutside%2Fsecret.txt"])
def test_paths_leading_outside_the_runs_folder_get_404(served, runs, path):
    """Sent byte for byte to the real server (an HTTP client library would normalise the dots)."""
    from lmlab.serve.server import start_server

    assert (runs.parent / "outside" / "secret.txt").read_text() == SECRET
    running = start_server(replace(served, runs=runs))
    try:
        url = urlparse(running.url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        conn.request("GET", path, headers={"Authorization": f"Bearer {API_KEY}"})
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
        assert resp.status == 404 and SECRET not in body
        conn.request("GET", "/reports/lineage/lineage.png", headers={"Authorization": f"Bearer {API_KEY}"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == PNG  # the same connection reaches what is inside
        conn.close()
    finally:
        running.stop()


def test_locate_refuses_every_way_out(runs):
    secret = runs.parent / "outside" / "secret.txt"
    assert secret.is_file()
    for rel in ["../outside/secret.txt", str(secret), "lineage/leak.txt", "elsewhere/secret.txt",
                "lineage/../..", "lineage\\..\\..\\outside\\secret.txt", "lineage/\x00"]:
        assert locate(runs, rel) is None, rel
    assert locate(runs, "lineage/lineage.png") == (runs / "lineage" / "lineage.png").resolve()
    assert locate(runs, "") == runs.resolve()


def test_the_api_key_is_required_when_set(served, runs):
    for path in ["/reports", "/reports/lineage/", "/reports/lineage/lineage.png"]:
        for key in (None, "wrong"):
            r = client(served, runs, key=key).get(path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert client(served, runs).get(path).status_code == 200
    open_app = client(replace(served, api_key=None), runs, key=None)
    assert open_app.get("/reports/lineage/").status_code == 200


def test_without_a_runs_folder_the_listing_says_how_to_give_one(served):
    c = client(served, None)
    r = c.get("/reports")
    assert r.status_code == 200 and "--runs DIR" in r.text
    assert c.get("/reports/lineage/").status_code == 404
