"""Fixtures of the serving tests: a tiny random LLaMA run with peaked, varied next-token
distributions, and a real uvicorn server on a free loopback port driven by the openai client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.align.conftest import make_tiny_base

API_KEY = "sk-test-key"
NAME = "tiny"


def make_run(folder: Path, block_size: int = 128) -> Path:
    """A run folder (:func:`make_tiny_base`) whose weights are scaled up, so greedy text varies and
    near-ties between tokens are rare. The output rows of the bytes 0x80-0xFF are zero: their logit 0
    is never among the top ones, so the text is valid UTF-8 and streams token by token."""
    from lmlab.models.registry import load_model, save_model

    make_tiny_base(folder, block_size=block_size)
    model = load_model(folder / "model.safetensors")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
        model.lm_head.weight[128:256] = 0.0
    save_model(model, folder / "model.safetensors")
    return folder


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """The tiny run (read-only)."""
    return make_run(tmp_path_factory.mktemp("serve-run"))


@pytest.fixture(scope="session")
def loaded(run_dir):
    """``(model, tokenizer)`` of the run, for the reference outputs."""
    import lmlab

    return lmlab.load(run_dir)


def start(run_dir: Path, api_key: str | None = API_KEY, **settings):
    """Start a server on the run with ``settings`` (ServeConfig fields); return the running server."""
    from lmlab.serve.server import ServeConfig, build, start_server

    return start_server(build(ServeConfig(ckpt=run_dir, api_key=api_key, served_name=NAME, **settings)))


@pytest.fixture(scope="module")
def server(run_dir) -> Iterator:
    """A server (batch 32, queue 64, API key) for the module's tests."""
    running = start(run_dir)
    yield running
    running.stop()


@pytest.fixture
def client(server):
    """The openai client on the module's server (no retries: a test sees every status)."""
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=30)
