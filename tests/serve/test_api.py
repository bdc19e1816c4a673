"""The HTTP API on a real uvicorn server, driven by the openai client: content equals lmlab's own
generation, streaming equals the whole answer, echo log-probs equal a forward, errors are OpenAI's JSON."""

from __future__ import annotations

import json
import threading

import httpx2 as httpx  # the HTTP client the openai package is built on
import openai
import pytest
import torch

from lmlab.data.chat import IM_END, encode_chat
from lmlab.generate import decode, generate_text
from tests.serve.conftest import API_KEY, NAME, start

PROMPT = "ROMEO: But soft, what light"


def greedy_text(loaded, prompt: str, n: int) -> str:
    model, tok = loaded
    return generate_text(model, tok, prompt, n, eos_id=tok.eot_id, temperature=0)[0].text


def test_health_is_public_and_models_lists_the_served_name_with_its_card(server, client, loaded):
    r = httpx.get(server.url + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    (model,) = client.models.list().data
    assert model.id == NAME
    card = model.model_extra["lmlab"]  # the model card, from the run's files
    assert card["family"] == "llama" and card["parameters"] == sum(p.numel() for p in loaded[0].parameters())
    assert card["tokenizer"]["vocab_size"] == loaded[1].vocab_size


def test_completion_equals_lmlab_generate(client, loaded):
    r = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=24, temperature=0)
    assert r.choices[0].text == greedy_text(loaded, PROMPT, 24)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(loaded[1].encode(PROMPT)) and r.usage.completion_tokens == 24
    # a list of prompts, token ids, n choices
    ids = loaded[1].encode("JULIET:")
    r = client.completions.create(model=NAME, prompt=[ids, ids], max_tokens=10, temperature=0, n=2)
    assert len(r.choices) == 4 and len({c.text for c in r.choices}) == 1
    assert r.choices[0].text == greedy_text(loaded, "JULIET:", 10)


def test_stop_strings_cut_the_text(client, loaded):
    full = greedy_text(loaded, PROMPT, 30)
    stop = full[12:14]
    r = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop])
    assert r.choices[0].text == full[:full.find(stop)] and r.choices[0].finish_reason == "stop"


def test_seeded_sampling_is_reproducible_and_equals_decode(client, loaded):
    model, tok = loaded
    kw = {"model": NAME, "prompt": PROMPT, "max_tokens": 16, "temperature": 0.8, "top_p": 0.9, "seed": 7}
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert a.choices[0].text == b.choices[0].text
    ref = decode(model, [tok.encode(PROMPT)], 16, temperature=0.8, top_p=0.9, seed=7, eos_id=tok.eot_id)[0]
    assert a.choices[0].text == tok.decode(ref)


def test_chat_equals_a_greedy_decode_of_the_template(client, loaded):
    model, tok = loaded
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there!"}]
    r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=20, temperature=0)
    ids = encode_chat(tok, messages, add_generation_prompt=True).ids
    ends = [tok.token_to_id(IM_END), tok.eot_id]
    ref = decode(model, [ids], 20, temperature=0, eos_id=ends)[0]
    want = tok.decode([t for t in ref if t not in ends])
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(ref)


def test_streams_concatenate_to_the_whole_answer(client):
    kw = {"model": NAME, "prompt": PROMPT, "max_tokens": 20, "temperature": 0}
    whole = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"

    messages = [{"role": "user", "content": "Tell me a story."}]
    whole = client.chat.completions.create(model=NAME, messages=messages, max_tokens=15,
                                           temperature=0).choices[0].message.content
    chunks = list(client.chat.completions.create(model=NAME, messages=messages, max_tokens=15, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_sse_ends_with_done(server):
    body = {"model": NAME, "prompt": "a", "max_tokens": 3, "temperature": 0, "stream": True}
    r = httpx.post(server.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    events = [line for line in r.text.split("\n\n") if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


def test_echo_logprobs_equal_a_direct_forward(client, loaded):
    model, tok = loaded
    ids = tok.encode(PROMPT)
    r = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=0, temperature=0, echo=True,
                                  logprobs=2)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == PROMPT and lp.tokens == [tok.decode([t]) for t in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    with torch.no_grad():
        ref = model(torch.tensor([ids])).float().log_softmax(-1)[0]
    for i in range(1, len(ids)):
        assert lp.token_logprobs[i] == pytest.approx(float(ref[i - 1, ids[i]]), abs=1e-4)
        best = int(ref[i - 1].argmax())
        assert max(lp.top_logprobs[i], key=lp.top_logprobs[i].get) == tok.decode([best])
    assert lp.text_offset == list(range(len(PROMPT)))  # one character per token
    # with a continuation: the prompt's entries, then the new tokens' (what lm-eval sums)
    r = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=3, temperature=0, echo=True,
                                  logprobs=1)
    lp = r.choices[0].logprobs
    new = decode(model, [ids], 3, temperature=0, eos_id=tok.eot_id)[0]
    assert lp.tokens[len(ids):] == [tok.decode([t]) for t in new]
    with torch.no_grad():
        ref = model(torch.tensor([ids + new])).float().log_softmax(-1)[0]
    for i, t in enumerate(new):
        k = len(ids) + i
        assert lp.token_logprobs[k] == pytest.approx(float(ref[k - 1, t]), abs=1e-4)
        assert list(lp.top_logprobs[k]) == [lp.tokens[k]]  # greedy: the chosen token is the top one


def test_chat_logprobs(client):
    r = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                       temperature=0, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert "".join(c.token for c in content if c.token != IM_END) == r.choices[0].message.content
    assert all(c.top_logprobs[0].token == c.token and len(c.top_logprobs) == 2 for c in content)


def test_wrong_or_missing_key_gets_401_json(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.completions.create(model=NAME, prompt="x", max_tokens=1)
    assert e.value.status_code == 401
    r = httpx.get(server.url + "/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_bad_requests_get_400_or_404_json_and_the_server_keeps_serving(server, client):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    post = lambda path, **kw: httpx.post(server.url + path, headers=headers, **kw)  # noqa: E731
    cases = [
        (post("/v1/completions", content=b"{not json"), 400, None),
        (post("/v1/completions", json={"model": NAME, "prompt": "x", "temperature": "hot"}), 400,
         "temperature"),
        (post("/v1/completions", json={"model": NAME, "prompt": "x", "max_tokens": 1000}), 400, "prompt"),
        (post("/v1/completions", json={"model": NAME, "prompt": [10**6]}), 400, "prompt"),
        (post("/v1/completions", json={"model": NAME, "prompt": []}), 400, "prompt"),
        (post("/v1/completions", json={"model": NAME, "prompt": "x", "n": 1000}), 400, "n"),
        (post("/v1/completions", json={"model": NAME, "prompt": "x", "stop": list("abcde")}), 400, "stop"),
        (post("/v1/completions", json={"model": NAME, "prompt": "x", "presence_penalty": 1}), 400,
         "presence_penalty"),
        (post("/v1/chat/completions", json={"model": NAME, "messages": [{"role": "robot", "content": "x"}]}),
         400, "messages"),
        (post("/v1/completions", json={"model": "gpt-5", "prompt": "x"}), 404, "model"),
        (post("/v1/nothing", json={}), 404, None),
    ]
    for r, status, param in cases:
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["param"] == param and err["message"] and "Traceback" not in r.text
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=NAME, prompt="x", max_tokens=500)
    assert client.completions.create(model=NAME, prompt="x", max_tokens=2).choices[0].text


def test_32_simultaneous_greedy_requests_equal_their_solo_outputs(client, loaded):
    prompts = [f"{name}: line {i}" for i, name in enumerate(["ROMEO", "JULIET", "NURSE", "TYBALT"] * 8)]
    lengths = [8 + (i * 5) % 17 for i in range(32)]
    got = [None] * 32

    def ask(i: int) -> None:
        got[i] = client.completions.create(model=NAME, prompt=prompts[i], max_tokens=lengths[i],
                                           temperature=0).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [greedy_text(loaded, p, n) for p, n in zip(prompts, lengths)]


def test_a_full_queue_gets_429_then_recovers(run_dir, loaded):
    running = start(run_dir, api_key=None, max_batch=1, max_queue=1)
    try:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0)
        # three choices: one runs, one waits, there is no room for the third
        with pytest.raises(openai.RateLimitError) as e:
            client.completions.create(model=NAME, prompt=PROMPT, max_tokens=5, n=3)
        assert e.value.status_code == 429 and e.value.body["code"] == "queue_full"
        r = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=5, n=2, temperature=0)
        assert [c.text for c in r.choices] == [greedy_text(loaded, PROMPT, 5)] * 2
    finally:
        running.stop()


def test_a_client_that_disconnects_mid_stream_frees_its_slot(server):
    body = {"model": NAME, "prompt": "x", "max_tokens": 120, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        first = next(r.iter_lines())
        assert first.startswith("data: ") and json.loads(first[6:])["object"] == "text_completion"
    for _ in range(200):  # the engine drops the request at its next step
        if server.engine.load() == {"running": 0, "waiting": 0}:
            break
        threading.Event().wait(0.01)
    assert server.engine.load() == {"running": 0, "waiting": 0}


def test_tokenize_detokenize_and_tokenizer_info(server, loaded):
    _, tok = loaded
    headers = {"Authorization": f"Bearer {API_KEY}"}
    r = httpx.post(server.url + "/tokenize", json={"model": NAME, "prompt": PROMPT}, headers=headers).json()
    assert r["tokens"] == tok.encode(PROMPT) and r["count"] == len(PROMPT) and r["max_model_len"] == 128
    messages = [{"role": "user", "content": "Hi"}]
    r = httpx.post(server.url + "/tokenize", json={"messages": messages}, headers=headers).json()
    assert r["tokens"] == encode_chat(tok, messages, add_generation_prompt=True).ids
    r = httpx.post(server.url + "/detokenize", json={"tokens": tok.encode(PROMPT)}, headers=headers)
    assert r.json() == {"prompt": PROMPT}
    r = httpx.post(server.url + "/detokenize", json={"tokens": [10**6]}, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"
    info = httpx.get(server.url + "/tokenizer_info", headers=headers).json()
    assert info["eos_token_id"] == tok.eot_id and info["eos_token"] == "<|endoftext|>"
    assert "<|im_start|>" in info["chat_template"]


def test_metrics_count_requests_tokens_and_latencies(server, client):
    def scrape() -> dict[str, float]:
        text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line and not line.startswith("#")}

    before = scrape()
    client.completions.create(model=NAME, prompt=PROMPT, max_tokens=6, temperature=0, n=2)
    after = scrape()
    grew = lambda key: after.get(key, 0) - before.get(key, 0)  # noqa: E731
    assert grew('lmlab_requests_total{finish_reason="length"}') == 2
    assert grew("lmlab_generation_tokens_total") == 12
    assert grew("lmlab_prompt_tokens_total") == 2 * len(PROMPT)
    assert grew("lmlab_time_to_first_token_seconds_count") == 2
    assert grew("lmlab_time_per_output_token_seconds_count") == 10
    assert after["lmlab_requests_running"] == 0 and after['lmlab_batch_size_bucket{le="+Inf"}'] >= 5


def test_streamed_echo_and_logprobs_equal_the_whole_answer(client):
    kw = {"model": NAME, "prompt": PROMPT, "max_tokens": 5, "temperature": 0, "echo": True, "logprobs": 2}
    whole = client.completions.create(**kw).choices[0]
    chunks = [c.choices[0] for c in client.completions.create(**kw, stream=True) if c.choices]
    assert "".join(c.text for c in chunks) == whole.text
    parts = [c.logprobs for c in chunks if c.logprobs is not None]
    assert sum((p.tokens for p in parts), []) == whole.logprobs.tokens
    assert sum((p.token_logprobs for p in parts), []) == whole.logprobs.token_logprobs
    assert sum((p.text_offset for p in parts), []) == whole.logprobs.text_offset
    plain = [c.choices[0].text for c in client.completions.create(**{**kw, "logprobs": None}, stream=True)
             if c.choices]
    assert "".join(plain) == whole.text


def test_a_flood_beyond_batch_and_queue_gets_exact_answers_or_429_and_the_server_goes_on(run_dir, loaded):
    running = start(run_dir, api_key=None, max_batch=4, max_queue=8)
    try:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        prompts = [f"line {i}:" for i in range(40)]
        got: list = [None] * 40

        def ask(i: int) -> None:
            try:
                got[i] = client.completions.create(model=NAME, prompt=prompts[i], max_tokens=30,
                                                   temperature=0).choices[0].text
            except openai.RateLimitError as e:
                got[i] = e.status_code

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        served = [i for i, g in enumerate(got) if g != 429]
        print(f"{40 - len(served)} of 40 refused with 429")
        assert len(served) >= 12  # at least a batch and a queue's worth got in
        assert all(got[i] == greedy_text(loaded, prompts[i], 30) for i in served)
        assert client.completions.create(model=NAME, prompt="x", max_tokens=2).choices[0].text
        assert running.engine.load() == {"running": 0, "waiting": 0}
    finally:
        running.stop()


def test_an_imported_hugging_face_folder_serves_the_same_text(run_dir, loaded, tmp_path):
    """A Hugging Face folder (here our own export of the run) is served through the same loader: the
    greedy completion equals the run's."""
    from lmlab.interop.hf import export_hf

    model, _ = loaded
    hf_dir = export_hf(model, tmp_path / "hf", tokenizer_dir=run_dir)
    running = start(hf_dir, api_key=None)
    try:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0)
        r = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=16, temperature=0)
        assert r.choices[0].text == greedy_text(loaded, PROMPT, 16)
    finally:
        running.stop()
