"""Serving every model family that generates: recurrent LMs (LSTM, GRU), the NPLM, ELMo's forward
LM, an Infini-attention decoder and an encoder-decoder run one decode state per request
(lmlab.serve.backends.SequenceBatch) behind the same engine and API as the Transformer decoders. Each
row equals its solo lmlab.generate.decode run, concurrent or not; streaming, echo with logprobs,
seeds, cancelling and chat work through the real openai client against one server of several
models (a decoder among them)."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.generate import decode
from lmlab.generate.text import generate_text
from lmlab.serve.engine import Engine, Event, SamplingParams
from tests.serve.conftest import make_run, run_all

pytestmark = pytest.mark.usefixtures("one_torch_thread")
KEY = "sk-families"
# served name -> (preset, overrides): tiny shapes, d 32
FAMILIES = {
    "lstm": ("lstm-tiny", {}),
    "gru": ("gru-tiny", {}),
    "nplm": ("nplm-tiny", {}),
    "elmo": ("elmo-tiny", {}),
    "infini": ("infini-tiny", dict(d_model=32, n_head=2, block_size=32, segment_len=8)),
    "encdec": ("transformer-tiny", dict(d_model=32, n_head=2, block_size=64)),
}
SEQUENCE = ["lstm", "gru", "nplm", "infini"]  # the families every served behaviour is checked on


def make_family_run(folder: Path, preset: str, **overrides) -> Path:
    """A run folder with a random tiny ``preset`` model (weights scaled up so greedy text varies)
    and the char tokenizer of the decoder runs (it has the chat tokens); return it."""
    from lmlab.data.tokenizers import train_tokenizer
    from lmlab.models.registry import build_model, get_preset, save_model
    from tests.align.conftest import ALPHABET

    folder.mkdir(parents=True)
    tok = train_tokenizer("char", iter([ALPHABET]))
    torch.manual_seed(2)
    model = build_model(get_preset(preset, vocab_size=tok.vocab_size, **overrides))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.5)
    save_model(model, folder / "model.safetensors")
    tok.save(folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    out = {name: make_family_run(root / name, preset, **over) for name, (preset, over) in FAMILIES.items()}
    out["decoder"] = make_run(root / "decoder")
    return out


@pytest.fixture(scope="module")
def loaded(runs) -> dict:
    import lmlab

    return {name: lmlab.load(path) for name, path in runs.items()}


@pytest.fixture(scope="module")
def server(runs) -> Iterator:
    """One server of every run, all in memory at once (``--ckpt NAME=RUN`` repeated)."""
    from lmlab.serve.server import ServeConfig, build, start_server

    cfg = ServeConfig(ckpt=[f"{n}={p}" for n, p in runs.items()], api_key=KEY, max_loaded=len(runs),
                      max_batch=4)
    running = start_server(build(cfg))
    yield running
    running.stop()


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=30)


def engine_of(server, name: str) -> Engine:
    return server.loading.served.pool.get(name).engine


@pytest.mark.parametrize("name", [*SEQUENCE, "elmo", "encdec"])
def test_concurrent_greedy_and_seeded_rows_equal_their_solo_decodes(loaded, name):
    model, tok = loaded[name]
    g = torch.Generator().manual_seed(3)
    # prompts longer than the Infini decoder's segment and block (it reads any length)
    prompts = [torch.randint(3, tok.vocab_size, (n,), generator=g).tolist() for n in (1, 5, 12, 40, 3, 9)]
    params = [SamplingParams(max_tokens=4 + 5 * i, temperature=0) for i in range(len(prompts))]
    params[2] = SamplingParams(max_tokens=10, temperature=0.9, top_k=20, seed=7)
    engine = Engine(model, tok, max_batch=4).start()  # 6 requests: two wait, then join mid-flight
    try:
        outs = run_all(engine, prompts, params)
        again = engine.generate(prompts[2], params[2], timeout=30)
    finally:
        engine.stop()
    for p, q, o in zip(prompts, params, outs):
        solo = decode(model, [p], q.max_tokens, temperature=q.temperature, top_k=q.top_k, seed=q.seed)[0]
        assert o.tokens == solo and o.finish_reason == "length"
    assert again.tokens == outs[2].tokens  # a seeded sample is reproducible


@pytest.mark.parametrize("name", SEQUENCE)
def test_streamed_text_equals_generate_text(client, loaded, name):
    model, tok = loaded[name]
    want = generate_text(model, tok, "To be", 24, eos_id=tok.eot_id, temperature=0)[0].text
    stream = client.completions.create(model=name, prompt="To be", max_tokens=24, temperature=0, stream=True)
    pieces = [c.choices[0].text for c in stream if c.choices]
    assert "".join(pieces) == want and len([p for p in pieces if p]) > 1


@pytest.mark.parametrize("name", [*SEQUENCE, "elmo"])
def test_echo_logprobs_equal_a_direct_forward(client, loaded, name):
    model, tok = loaded[name]
    r = client.completions.create(model=name, prompt="Hamlet: to be", max_tokens=3, temperature=0, echo=True,
                                  logprobs=2)
    ids = tok.encode("Hamlet: to be")
    with torch.no_grad():
        x = torch.tensor([ids])
        lp = (model.forward_lm(x)[0] if name == "elmo" else model(x))[0].float().log_softmax(-1)
    got = r.choices[0].logprobs.token_logprobs
    assert got[0] is None
    for i, t in enumerate(ids[1:]):
        assert math.isclose(got[i + 1], lp[i, t].item(), abs_tol=1e-4)
    assert r.choices[0].text.startswith("Hamlet: to be") and len(got) == len(ids) + 3


@pytest.mark.parametrize("name", SEQUENCE)
def test_cancel_frees_the_row(server, loaded, name):
    model, tok = loaded[name]
    engine = engine_of(server, name)
    events: list[Event] = []
    started, done = threading.Event(), threading.Event()

    def sink(ev: Event) -> None:
        events.append(ev)
        started.set()
        if ev.kind == "done":
            done.set()

    # no context limit: the request could run for 10**6 tokens, but the cancel ends it
    endless = SamplingParams(max_tokens=10**6, temperature=0, ignore_eos=True)
    [req] = engine.submit([([5, 6, 7], endless, sink)])
    assert started.wait(30)
    req.cancel()
    assert done.wait(30)
    assert events[-1].finish_reason == "cancelled" and engine.load() == {"running": 0, "waiting": 0}
    six = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    after = engine.generate([5, 6, 7], six, timeout=30)
    assert after.tokens == decode(model, [[5, 6, 7]], 6, temperature=0)[0]


def test_an_lstm_and_a_decoder_served_together(client, loaded):
    for name in ("decoder", "lstm"):
        model, tok = loaded[name]
        want = generate_text(model, tok, "ROMEO:", 12, eos_id=tok.eot_id, temperature=0)[0].text
        r = client.completions.create(model=name, prompt="ROMEO:", max_tokens=12, temperature=0)
        assert r.choices[0].text == want and r.model == name
    cards = {m.id: m for m in client.models.list().data}
    lstm = cards["lstm"].model_extra
    assert lstm["max_model_len"] is None and lstm["lmlab"]["family"] == "lstm"
    assert lstm["lmlab"]["context"] is None and lstm["lmlab"]["loaded"]
    assert cards["decoder"].model_extra["max_model_len"] == 128
    # the chat template of the run's tokenizer; no max_tokens and no context limit: a default length
    chat = client.chat.completions.create(model="lstm", messages=[{"role": "user", "content": "Hi"}],
                                          temperature=0)
    assert chat.choices[0].finish_reason in ("stop", "length") and chat.usage.completion_tokens > 0
    seeded = [client.completions.create(model="gru", prompt="x", max_tokens=8, temperature=1.0, seed=5)
              .choices[0].text for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_an_encoder_decoder_answers_but_refuses_echo(client, loaded):
    model, tok = loaded["encdec"]
    want = generate_text(model, tok, "hello", 10, temperature=0)[0].text
    r = client.completions.create(model="encdec", prompt="hello", max_tokens=10, temperature=0)
    assert r.choices[0].text == want
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="encdec", prompt="hello", max_tokens=2, echo=True, logprobs=1)
    assert "no prompt logprobs" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="encdec", prompt="hello", max_tokens=65)
    assert "target tokens" in e.value.body["message"]


def test_a_model_that_cannot_generate_is_refused_in_one_line(tmp_path):
    from lmlab.serve.server import ServeConfig, build

    run = make_family_run(tmp_path / "bert", "bert-tiny", d_model=32, n_head=2, block_size=32)
    with pytest.raises(LmlabError) as e:
        build(ServeConfig(ckpt=[str(run)]))
    assert "fill-mask" in str(e.value) and "\n" not in str(e.value)


class Bigram:
    """A SequenceLM that is no torch module: log-probabilities from a table of bigrams, -inf for
    the tokens that never follow (as the token n-gram's logits)."""

    vocab_size, block_size, device = 12, None, torch.device("cpu")

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.table = torch.randn(self.vocab_size, self.vocab_size, generator=g)
        self.table[:, ::3] = -math.inf  # every third token never follows
        self.table = self.table.log_softmax(-1)

    def start(self, prompt: list[int]) -> BigramStepper:
        return BigramStepper(self, prompt[-1])

    def prompt_logits(self, prompt: list[int]) -> torch.Tensor:
        return self.table[torch.tensor(prompt)]


class BigramStepper:
    def __init__(self, lm: Bigram, last: int):
        self.lm, self.last = lm, last

    def prefill(self) -> torch.Tensor:
        return self.lm.table[self.last][None]

    def step(self, token: int) -> torch.Tensor:
        self.last = token
        return self.prefill()


class _Chars:
    def decode(self, ids: list[int]) -> str:
        return "".join(chr(97 + i) for i in ids)


def test_any_sequence_lm_is_served_greedy_sampled_and_echoed():
    lm = Bigram()
    engine = Engine(lm, _Chars(), max_batch=2).start()
    try:
        prompts = [[1], [4, 2], [5, 7, 8]]
        outs = run_all(engine, prompts, [SamplingParams(max_tokens=6 + i, temperature=0) for i in range(3)])
        sampled = engine.generate([1], SamplingParams(max_tokens=30, temperature=1.0, seed=3), timeout=30)
        echo = engine.generate([4, 2, 5], SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=1,
                                                         logprobs=1), timeout=30)
    finally:
        engine.stop()
    for p, o in zip(prompts, outs):
        want, last = [], p[-1]
        for _ in range(len(o.tokens)):
            last = int(lm.table[last].argmax())
            want.append(last)
        assert o.tokens == want and len(want) == 6 + prompts.index(p)
    assert all(t % 3 for t in sampled.tokens)  # a token of probability 0 is never drawn
    assert [e.logprob for e in echo.prompt_logprobs[1:]] == pytest.approx([lm.table[4, 2].item(),
                                                                         lm.table[2, 5].item()], abs=1e-6)
    assert echo.logprobs[0].logprob == pytest.approx(lm.table[5].max().item())
