"""The lineage's token n-gram (lmlab.ngram.token_lm) served beside a decoder: found under --runs by
its ngram.json, greedy text equal to the n-gram's argmax step by step, echo logprobs equal to its
prompt_logits, its card in /v1/models."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
import torch

from tests.serve.conftest import make_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")
KEY = "sk-ngram"
TEXT = "to be or not to be that is the question whether tis nobler in the mind to suffer " * 8


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A runs folder: a lineage run with a decoder and its token n-gram (RUN/ngram)."""
    import lmlab
    from lmlab.ngram.model import corpus_from_ids, train_ngram
    from lmlab.ngram.token_lm import TokenNgramLM, save_token_ngram

    root = tmp_path_factory.mktemp("ngram-runs")
    run = make_run(root / "lineage")
    _, tok = lmlab.load(run)
    ids = np.array(tok.encode(TEXT) + [tok.eot_id])
    model = train_ngram(corpus_from_ids(ids, tok.eot_id), 3, "mkn", discount_fallback=True)
    save_token_ngram(run / "ngram", TokenNgramLM(model, tok.eot_id, tok.vocab_size), run / "tokenizer.json")
    return root


@pytest.fixture(scope="module")
def server(runs) -> Iterator:
    from lmlab.serve.server import ServeConfig, build, start_server

    running = start_server(build(ServeConfig(runs=runs, api_key=KEY, max_loaded=2)))
    yield running
    running.stop()


def test_the_token_ngram_is_served_beside_its_decoder(server, runs):
    import lmlab
    from lmlab.ngram.token_lm import load_token_ngram

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=30)
    cards = {m.id: m.model_extra for m in client.models.list().data}
    assert set(cards) == {"lineage", "lineage.ngram"}
    lm = load_token_ngram(runs / "lineage" / "ngram")
    _, tok = lmlab.load(runs / "lineage")
    prompt = tok.encode("to be or")
    want, stepper = [], lm.start(prompt)
    row = stepper.prefill()
    for _ in range(12):
        want.append(int(row.argmax()))
        row = stepper.step(want[-1])
    stream = client.completions.create(model="lineage.ngram", prompt="to be or", max_tokens=12, temperature=0,
                                       stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == tok.decode(want)
    assert set(want) <= set(tok.encode(TEXT)) and len(set(want)) > 1  # tokens of its training text
    r = client.completions.create(model="lineage.ngram", prompt="to be or", max_tokens=1, temperature=0,
                                  echo=True, logprobs=1)
    expect = lm.prompt_logits(prompt)
    got = r.choices[0].logprobs.token_logprobs
    for i, t in enumerate(prompt[1:]):
        assert math.isclose(got[i + 1], expect[i, t].item(), abs_tol=1e-4)
    card = cards["lineage.ngram"]
    assert card["max_model_len"] is None and card["lmlab"]["family"].startswith("n-gram")
    seeded = [client.completions.create(model="lineage.ngram", prompt="to", max_tokens=10, temperature=1.0,
                                        seed=4).choices[0].text for _ in range(2)]
    assert seeded[0] == seeded[1]
    assert torch.isfinite(expect).any(dim=1).all()
