"""The server's life around the requests: it listens while the model loads (503, then 200), a
checkpoint that does not load stops it with one line, a client that goes away before a
non-streaming answer cancels its requests, and after a load every per-request cache is freed."""

from __future__ import annotations

import gc
import json
import shutil
import socket
import threading
import weakref

import httpx2 as httpx  # the HTTP client the openai package is built on

from lmlab.serve.engine import Engine, SamplingParams
from lmlab.serve.server import ServeConfig, build, start_server
from tests.serve.conftest import API_KEY, NAME, start
from tests.serve.test_cli import free_port

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def wait_until(condition, tries: int = 3000) -> bool:
    """Poll ``condition()`` every 10 ms; return whether it became true (False after ``tries``)."""
    for _ in range(tries):
        if condition():
            return True
        threading.Event().wait(0.01)
    return condition()


def test_health_is_503_while_the_model_loads_then_200(run_dir):
    gate = threading.Event()

    def slow_load():
        assert gate.wait(60)  # the model "loads" until the test has seen the 503s
        return build(ServeConfig(ckpt=run_dir, api_key=API_KEY, served_name=NAME))

    running = start_server(slow_load)
    try:
        health = httpx.get(running.url + "/health")
        assert health.status_code == 503 and health.headers["retry-after"] == "1"
        assert health.json()["error"]["code"] == "model_loading"
        assert "loading" in health.json()["error"]["message"]
        body = {"model": NAME, "prompt": "x", "max_tokens": 2, "temperature": 0}
        early = httpx.post(running.url + "/v1/completions", json=body, headers=AUTH)
        assert early.status_code == 503 and early.json()["error"]["code"] == "model_loading"
        assert running.engine is None
        gate.set()
        assert running.loading.done.wait(60) and running.loading.error is None
        health = httpx.get(running.url + "/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        r = httpx.post(running.url + "/v1/completions", json=body, headers=AUTH)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    finally:
        gate.set()
        running.stop()


def test_a_checkpoint_that_does_not_load_stops_the_server_with_one_line(cli, run_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(run_dir / "tokenizer.json", bad / "tokenizer.json")
    (bad / "model.safetensors").write_bytes(b"not safetensors at all")
    r = cli("serve", "--ckpt", bad, "--port", free_port())
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(errors) == 1 and "model.safetensors is damaged" in errors[0]
    assert r.stderr.rstrip().splitlines()[-1] == errors[0]


def test_a_client_that_leaves_before_a_non_streaming_answer_cancels_its_requests(run_dir, monkeypatch):
    running = start(run_dir, api_key=None, max_batch=1)
    engine = running.engine
    forward = engine.model.forward

    def slow_forward(*args, **kwargs):
        threading.Event().wait(0.01)  # a slow model: the answer would take over a second
        return forward(*args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", slow_forward)
    try:
        # two choices in a batch of one: one decodes, one waits; a raw socket we can close early
        body = json.dumps({"model": NAME, "prompt": "x", "max_tokens": 120, "temperature": 0,
                           "ignore_eos": True, "n": 2}).encode()
        host, port = running.url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body))
        assert wait_until(lambda: engine.metrics.generation_tokens >= 2)
        assert engine.load() == {"running": 1, "waiting": 1}
        sock.close()
        assert wait_until(lambda: engine.load() == {"running": 0, "waiting": 0})
        assert engine.metrics.finished["cancelled"] == 2
        assert engine.metrics.generation_tokens < 120  # the first stopped early, the second never began
        assert engine.metrics.prompt_tokens == 1
    finally:
        running.stop()


def test_a_cancelled_request_leaves_the_queue_while_the_batch_is_full(loaded):
    model, tok = loaded
    engine = Engine(model, tok, max_batch=1, max_queue=4).start()
    try:
        order: list[str] = []

        def sink(name: str):
            return lambda ev: order.append(f"{name} {ev.finish_reason}") if ev.kind == "done" else None

        long = SamplingParams(max_tokens=100, temperature=0, ignore_eos=True)
        first, queued = engine.submit([([1, 2, 3], long, sink("first")), ([4, 5], long, sink("queued"))])
        queued.cancel()
        assert wait_until(lambda: len(order) == 2)
        # the queued one ended first, while the first still ran, and was never prefilled
        assert order == ["queued cancelled", "first length"]
        assert engine.metrics.prompt_tokens == 3
    finally:
        engine.stop()


def test_after_64_requests_no_request_or_cache_is_left_alive(loaded, monkeypatch):
    model, tok = loaded
    engine = Engine(model, tok, max_batch=8, max_queue=64).start()
    caches: list[weakref.ref] = []
    new_kv_cache = model.new_kv_cache

    def tracked(*args, **kwargs):
        cache = new_kv_cache(*args, **kwargs)
        caches.append(weakref.ref(cache))
        return cache

    monkeypatch.setattr(model, "new_kv_cache", tracked)
    try:
        done = threading.Semaphore(0)
        sink = lambda ev: done.release() if ev.kind in ("done", "error") else None  # noqa: E731
        params = [SamplingParams(max_tokens=4 + i % 9, temperature=0.0 if i % 2 else 0.8, seed=i)
                  for i in range(64)]
        reqs = engine.submit([([1 + i % 50, 2, 3][: 1 + i % 3], p, sink) for i, p in enumerate(params)])
        refs = [weakref.ref(r) for r in reqs]
        del reqs
        for _ in range(64):
            assert done.acquire(timeout=60)
        assert engine.load() == {"running": 0, "waiting": 0}  # each left the batch before it said done
        assert len(caches) == 64  # one prefill cache a request

        def alive() -> list:
            gc.collect()
            return [ref for ref in caches + refs if ref() is not None]

        assert wait_until(lambda: not alive(), tries=300), alive()
        assert sum(engine.metrics.finished.values()) == 64
    finally:
        engine.stop()
