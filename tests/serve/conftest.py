"""Fixtures of the serving tests: a tiny random LLaMA run with peaked, varied next-token
distributions, and a real uvicorn server on a free loopback port driven by the openai client."""

from __future__ import annotations

import string
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.align.conftest import make_tiny_base

API_KEY = "sk-test-key"
NAME = "tiny"


def make_run(folder: Path, block_size: int = 128) -> Path:
    """A run folder (:func:`make_tiny_base`) whose weights are scaled up (:func:`sharpen`)."""
    make_tiny_base(folder, block_size=block_size)
    sharpen(folder)
    return folder


def make_gpt2_run(folder: Path, block_size: int = 128, seed: int = 2) -> Path:
    """A second, different tiny run: a random GPT-2-style decoder (learned positions, LayerNorm, GELU,
    tied head; d 32, one layer) with its own char tokenizer (a smaller alphabet than
    :func:`make_tiny_base`'s), sharpened like :func:`make_run`."""
    from lmlab.data.tokenizers import train_tokenizer
    from lmlab.models.registry import build_model, get_preset, save_model

    folder.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer("char", iter([string.ascii_letters + " .,:;!?'-\n"]))
    torch.manual_seed(seed)
    model = build_model(get_preset("gpt2-tiny", vocab_size=tok.vocab_size, d_model=32, n_layer=1, n_head=2,
                                   block_size=block_size))
    save_model(model, folder / "model.safetensors")
    tok.save(folder / "tokenizer.json")
    sharpen(folder, seed, no_bytes=range(256))  # it says only its own characters (or ends)
    return folder


def sharpen(folder: Path, seed: int = 1, no_bytes: range = range(128, 256)) -> None:
    """Scale up the weights of the run in ``folder``, so greedy text varies and near-ties between tokens
    are rare. The output rows of the byte tokens ``no_bytes`` (0x80-0xFF) are zero: their logit 0 is
    never among the top ones, so the text is valid UTF-8 and streams token by token."""
    from lmlab.models.registry import load_model, save_model

    model = load_model(folder / "model.safetensors")
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
        model.lm_head.weight[no_bytes.start:no_bytes.stop] = 0.0
    save_model(model, folder / "model.safetensors")


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


def run_all(engine, prompts, params) -> list:
    """Submit every prompt from its own thread at once; return the outputs in order."""
    outs = [None] * len(prompts)

    def go(i: int) -> None:
        outs[i] = engine.generate(prompts[i], params[i], timeout=60)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outs
