"""``tools`` and ``tool_choice`` through the real openai client: a tiny model that learned one tool
conversation calls the tool (parsed into ``tool_calls``, streamed and not), answers from the tool's
result, and the choices "none", "required" and a named function behave as OpenAI's."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from tests.align.conftest import memorise
from tests.serve.conftest import API_KEY, NAME, start

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
CALL = {"id": "call_0", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
ANSWERED = ASK + [{"role": "assistant", "content": None, "tool_calls": [CALL]},
                  {"role": "tool", "tool_call_id": "call_0", "content": "18C"}]
CONVERSATION = ANSWERED + [{"role": "assistant", "content": "It is 18C."}]


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[openai.OpenAI]:
    running = start(memorise(tmp_path_factory.mktemp("tools-run"), CONVERSATION, [WEATHER], block_size=384))
    yield openai.OpenAI(base_url=running.url + "/v1", api_key=API_KEY, max_retries=0, timeout=30)
    running.stop()


def test_the_model_calls_the_tool_and_answers_from_its_result(client):
    r = client.chat.completions.create(model=NAME, messages=ASK, tools=[WEATHER], max_tokens=80)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"} and call.id.startswith("call_")
    # the client sends its call back with the tool's result, as an agent loop does
    messages = ASK + [choice.message.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": call.id, "content": "18C"}]
    r = client.chat.completions.create(model=NAME, messages=messages, tools=[WEATHER], max_tokens=40)
    assert r.choices[0].message.content == "It is 18C." and not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "stop"


def test_streamed_tool_call_arrives_as_a_tool_calls_delta(client):
    chunks = list(client.chat.completions.create(model=NAME, messages=ASK, tools=[WEATHER], max_tokens=80,
                                                 stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert content == "" and len(deltas) == 1
    assert deltas[0].function.name == "get_weather"
    assert json.loads(deltas[0].function.arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_returns_the_text_unparsed(client):
    r = client.chat.completions.create(model=NAME, messages=ASK, tools=[WEATHER], tool_choice="none",
                                       max_tokens=80)
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content.startswith('<tool_call>{"name": "get_weather"')


def test_required_and_named_choices_start_the_call(client):
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        r = client.chat.completions.create(model=NAME, messages=ASK, tools=[WEATHER], tool_choice=choice,
                                           max_tokens=80)
        calls = r.choices[0].message.tool_calls
        assert calls and calls[0].function.name == "get_weather", choice
    # forced to a tool the model never learned: it still starts that call; what follows is the model's
    r = client.chat.completions.create(model=NAME, messages=ASK, tools=[WEATHER, CLOCK],
                                       tool_choice={"type": "function", "function": {"name": "get_time"}},
                                       max_tokens=40)
    message = r.choices[0].message
    assert (message.tool_calls and message.tool_calls[0].function.name == "get_time") or \
        message.content.startswith('<tool_call>{"name": "get_time", "arguments": ')


@pytest.mark.parametrize("kwargs, message", [
    ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "1-64 letters"),
    ({"tool_choice": "required"}, "tool_choice needs tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}}, "not among"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice must be"),
])
def test_bad_tools_are_400_with_one_line(client, kwargs, message):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=NAME, messages=ASK, max_tokens=4, **kwargs)
    assert message in e.value.body["message"]


def test_tool_stream_holds_back_a_call_and_releases_plain_text():
    from lmlab.serve.tool_calls import ToolStream, plan_tools

    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    s = ToolStream(plan_tools([WEATHER], "auto"))
    sent = [s.feed(p) for p in ["Sure", " <to", "ol_call>", call[len("<tool_call>"):]]]
    assert "".join(sent) == "Sure "  # "<to" was held back, then known to open a call
    rest, calls = s.finish()
    assert rest == "" and calls[0].arguments == {"city": "Oslo"}
    s = ToolStream(plan_tools([WEATHER], "auto"))
    sent = [s.feed(p) for p in ["a <", "b <tool_ca", "ll{broken"]]
    rest, calls = s.finish()
    assert calls == [] and "".join(sent) + rest == "a <b <tool_call{broken"
    s = ToolStream(plan_tools([WEATHER], "required"))  # forced: nothing is content until the end
    assert s.feed('get_weather", "arguments": {}}') == ""
    assert s.finish()[1][0].name == "get_weather"
    s = ToolStream(plan_tools([WEATHER], "required"))
    s.feed("nonsense")
    assert s.finish() == ('<tool_call>{"name": "nonsense', [])
