"""Several models behind one server (--ckpt NAME=RUN repeated, --runs DIR, --max-loaded): each
request reaches the model it names, the least recently used model is unloaded and reloaded on
demand with the same answers, a model that fails to load reports its error while the others go
on, and /metrics labels every sample with its model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from lmlab.generate.text import generate_text
from tests.serve.conftest import make_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")
KEY = "sk-models"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A runs folder with two good tiny models (different weights) and one damaged one."""
    import torch

    from lmlab.models.registry import load_model, save_model

    root = tmp_path_factory.mktemp("runs")
    make_run(root / "lineage" / "alpha")
    beta = make_run(root / "lineage" / "beta")
    model = load_model(beta / "model.safetensors")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)
    save_model(model, beta / "model.safetensors")
    bad = make_run(root / "broken")
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    return root


@pytest.fixture(scope="module")
def server(runs) -> Iterator:
    from lmlab.serve.server import ServeConfig, build, start_server

    ckpts = [f"alpha={runs / 'lineage' / 'alpha'}", f"beta={runs / 'lineage' / 'beta'}",
             f"broken={runs / 'broken'}"]
    running = start_server(build(ServeConfig(ckpt=ckpts, api_key=KEY, max_loaded=1, runs=runs)))
    yield running
    running.stop()


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=30)


def greedy(run: Path, prompt: str, n: int) -> str:
    import lmlab

    model, tok = lmlab.load(run)
    return generate_text(model, tok, prompt, n, eos_id=tok.eot_id, temperature=0)[0].text


def listed(client) -> dict:
    return {m.id: m.model_extra["lmlab"] for m in client.models.list().data}


def test_each_request_reaches_its_model_and_the_lru_one_is_reloaded(client, runs):
    want = {name: greedy(runs / "lineage" / name, "To be", 12) for name in ("alpha", "beta")}
    assert want["alpha"] != want["beta"]
    for name in ("alpha", "beta", "alpha"):  # max_loaded 1: each switch unloads the other
        r = client.completions.create(model=name, prompt="To be", max_tokens=12, temperature=0)
        assert r.choices[0].text == want[name] and r.model == name
        cards = listed(client)
        assert [n for n, c in cards.items() if c["loaded"]] == [name]
        assert not cards[name]["evicted"] and not cards["broken"]["evicted"]
    assert cards["beta"]["evicted"]  # unloaded to make room for alpha
    assert cards["beta"]["family"] == "llama" and cards["beta"]["parameters"] > 0


def test_a_model_that_fails_to_load_reports_and_the_others_go_on(client):
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(model="broken", prompt="x", max_tokens=2)
    assert e.value.status_code == 503 and "could not be loaded" in e.value.body["message"]
    assert listed(client)["broken"]["error"]
    r = client.completions.create(model="beta", prompt="x", max_tokens=2, temperature=0)
    assert r.choices[0].finish_reason == "length"


def test_unknown_and_missing_model_names(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gamma", prompt="x", max_tokens=2)
    assert "'alpha', 'beta', 'broken'" in e.value.body["message"]
    r = httpx.post(server.url + "/tokenize", json={"prompt": "x"}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and "give model" in r.json()["error"]["message"]


def test_metrics_label_each_model(client, server):
    from lmlab.serve.app import merge_metrics
    from lmlab.serve.metrics import Metrics

    client.completions.create(model="alpha", prompt="x", max_tokens=2)
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert "lmlab_generation_tokens_total 2" in text  # one model in memory: its text as is
    a, b = Metrics(), Metrics()
    a.generation_tokens, b.generation_tokens = 5, 7
    a.finished["stop"] += 1
    merged = merge_metrics({"alpha": a.render(1, 0), "beta": b.render(0, 2)})
    assert merged.count("# TYPE lmlab_generation_tokens_total counter") == 1
    assert 'lmlab_generation_tokens_total{model="alpha"} 5' in merged
    assert 'lmlab_generation_tokens_total{model="beta"} 7' in merged
    assert 'lmlab_requests_total{model="alpha",finish_reason="stop"} 1' in merged
    assert 'lmlab_requests_waiting{model="beta"} 2' in merged
    assert 'lmlab_batch_size_bucket{model="alpha",le="+Inf"} 0' in merged


def test_runs_folder_serves_every_run_in_it(runs):
    from lmlab.serve.server import ServeConfig, model_specs

    names = [s.name for s in model_specs(ServeConfig(runs=runs))]
    assert names == ["broken", "lineage.alpha", "lineage.beta"]
