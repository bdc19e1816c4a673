"""``lmlab serve`` from the real CLI: it starts, answers, refuses a bad checkpoint and, without an
API key, listens on loopback only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx2 as httpx  # the HTTP client the openai package is built on


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_refuses_a_missing_checkpoint(cli, tmp_path):
    r = cli("serve", "--ckpt", tmp_path / "nothing")
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_serve_refuses_a_runs_folder_that_is_not_one(run_dir, tmp_path, capsys):
    from lmlab.cli import main

    assert main(["serve", "--ckpt", str(run_dir), "--runs", str(tmp_path / "nothing")]) == 2
    assert "--runs" in capsys.readouterr().err


def test_serve_starts_answers_and_binds_loopback_without_a_key(run_dir):
    port = free_port()
    env = {**os.environ, "LMLAB_API_KEY": ""}
    args = ["serve", "--ckpt", run_dir, "--host", "0.0.0.0", "--port", port, "--served-name", "tiny"]
    proc = subprocess.Popen([sys.executable, "-m", "lmlab.cli", *map(str, args)], env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for _ in range(600):  # not listening yet, then 503 while the model loads, then 200
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                if r.status_code == 200:
                    break
                assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
            except httpx.TransportError:
                pass  # refused: the server is not listening yet; try again
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        assert r.status_code == 200
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions",
                       json={"model": "tiny", "prompt": "Hi", "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "listening on 127.0.0.1 only" in err and "serving 'tiny'" in err and "; ready" in err
