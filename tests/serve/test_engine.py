"""The continuous-batching engine: each row decodes as if alone (greedy and seeded sampling equal
lmlab.generate.decode), requests join and leave mid-flight, stops, cancellation, the bounded queue."""

from __future__ import annotations

import threading

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.generate import decode
from lmlab.serve.engine import Engine, Event, QueueFull, SamplingParams
from tests.serve.conftest import run_all


@pytest.fixture(scope="module")
def model_tok(run_dir):
    import lmlab

    return lmlab.load(run_dir)


def random_prompts(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 40, (n,), generator=g).tolist()
    return [torch.randint(0, vocab, (k,), generator=g).tolist() for k in lengths]


def test_batch_of_33_greedy_and_seeded_rows_equal_their_solo_decodes(model_tok):
    model, tok = model_tok
    V = model.config.vocab_size
    prompts = random_prompts(33, V)
    # different lengths of output, so rows leave (and the 33rd joins) while others run
    params = [SamplingParams(max_tokens=5 + (i * 7) % 30, temperature=0.0) for i in range(33)]
    for i in range(0, 33, 4):  # every fourth row samples, seeded
        params[i] = SamplingParams(max_tokens=params[i].max_tokens, temperature=0.9, top_k=20, top_p=0.95,
                                   seed=i)
    engine = Engine(model, tok, eos_ids=[], max_batch=32, max_queue=64).start()
    try:
        outs = run_all(engine, prompts, params)
    finally:
        engine.stop()
    for p, q, o in zip(prompts, params, outs):
        solo = decode(model, [p], q.max_tokens, temperature=q.temperature, top_k=q.top_k, top_p=q.top_p,
                      seed=q.seed)[0]
        assert o.tokens == solo and o.finish_reason == "length"


def test_stop_strings_and_stop_ids_end_a_row(model_tok):
    model, tok = model_tok
    prompt = tok.encode("To be, or not to be")
    full = decode(model, [prompt], 30, temperature=0)[0]
    text = tok.decode(full)
    engine = Engine(model, tok, max_batch=4).start()
    try:
        stop = text[10:12]
        cut = engine.generate(prompt, SamplingParams(max_tokens=30, temperature=0, stop=[stop]))
        assert cut.text == text[:text.find(stop)] and cut.finish_reason == "stop"
        by_id = engine.generate(prompt, SamplingParams(max_tokens=30, temperature=0, stop_ids=[full[7]]))
        k = full.index(full[7])
        assert by_id.tokens == full[:k + 1] and by_id.text == tok.decode(full[:k])
        assert by_id.finish_reason == "stop"
        eos = Engine(model, tok, eos_ids=[full[3]]).start()  # the engine's own end-of-text ids
        try:
            assert eos.generate(prompt, SamplingParams(max_tokens=30, temperature=0)).tokens == \
                full[:full.index(full[3]) + 1]
            through = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
            assert eos.generate(prompt, through).tokens == full
        finally:
            eos.stop()
    finally:
        engine.stop()


def test_logprobs_and_prompt_logprobs_equal_a_direct_forward(model_tok):
    model, tok = model_tok
    prompt = tok.encode("Hello there, friend")
    engine = Engine(model, tok).start()
    try:
        params = SamplingParams(max_tokens=4, temperature=0, logprobs=3, prompt_logprobs=3)
        out = engine.generate(prompt, params)
    finally:
        engine.stop()
    with torch.no_grad():
        ref = model(torch.tensor([prompt + out.tokens])).float().log_softmax(-1)[0]
    seq = prompt + out.tokens
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
    for i, e in enumerate(out.prompt_logprobs[1:] + out.logprobs, start=1):
        assert e.token == seq[i]
        assert e.logprob == pytest.approx(float(ref[i - 1, seq[i]]), abs=1e-4)
        top = torch.topk(ref[i - 1], 3)
        assert [t for t, _ in e.top] == top.indices.tolist()
    assert all(e.top[0][0] == e.token for e in out.logprobs)  # greedy: the chosen one is the top one


def test_cancel_frees_the_slot_and_a_full_queue_refuses(model_tok):
    model, tok = model_tok
    engine = Engine(model, tok, max_batch=1, max_queue=1).start()
    try:
        events: list[Event] = []
        done = threading.Event()

        def sink(ev: Event) -> None:
            events.append(ev)
            if ev.kind == "done":
                done.set()

        long = SamplingParams(max_tokens=100, temperature=0)
        with pytest.raises(QueueFull):  # one runs, one waits, the third has no room
            engine.submit([([1, 2], long, sink)] * 3)
        [req] = engine.submit([([1, 2, 3], long, sink)])
        req.cancel()
        assert done.wait(10)
        assert events[-1].finish_reason == "cancelled"
        assert sum(e.kind == "token" for e in events) < 100
        assert engine.load() == {"running": 0, "waiting": 0}
        after = engine.generate([1, 2, 3], SamplingParams(max_tokens=6, temperature=0), timeout=10)
        assert after.tokens == decode(model, [[1, 2, 3]], 6, temperature=0)[0]
        with pytest.raises(LmlabError, match="context"):
            engine.submit([([1] * 100, SamplingParams(max_tokens=100), sink)])
        with pytest.raises(LmlabError, match="vocabulary"):
            engine.submit([([10**6], long, sink)])
    finally:
        engine.stop()


class _Bytes:
    """A stand-in tokenizer: any id decodes to one character."""

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(33 + i % 90) for i in ids)


@pytest.mark.parametrize("kind", ["gpt2", "deepseek"])
def test_learned_positions_and_mla_caches_batch_exactly(kind):
    from lmlab.models import build_model, get_preset

    torch.manual_seed(0)
    model = build_model(get_preset(f"{kind}-tiny", vocab_size=97, block_size=64, n_layer=2, d_model=32))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    model.eval()
    prompts = random_prompts(12, 97, seed=3)
    params = [SamplingParams(max_tokens=4 + i % 9, temperature=0.0) for i in range(12)]
    engine = Engine(model, _Bytes(), max_batch=5).start()  # rows wait, join and leave
    assert type(engine.slots.store).__name__ == ("MLACache" if kind == "deepseek" else "KVCache")
    try:
        outs = run_all(engine, prompts, params)
    finally:
        engine.stop()
    assert [o.tokens for o in outs] == [decode(model, [p], q.max_tokens, temperature=0)[0]
                                        for p, q in zip(prompts, params)]
