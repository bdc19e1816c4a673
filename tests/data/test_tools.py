"""The tool-call format: the template lists tools and renders calls as Hugging Face's
apply_chat_template does, flattened turns render the same text, the assistant mask covers the
calls, and parsing reports malformed calls instead of failing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmlab.data.chat import encode_chat, render_chat
from lmlab.data.tokenizers import train_tokenizer
from lmlab.data.tools import (
    CALL_OPEN,
    check_tools,
    flatten_messages,
    format_call,
    parse_tool_calls,
    partial_open,
)
from lmlab.errors import LmlabError

CALC = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                   "required": ["expression"]}}}
SEARCH = {"type": "function", "function": {"name": "search", "parameters": {
    "type": "object", "properties": {"query": {"type": "string"}}}}}
TOOL_CHAT = [
    {"role": "system", "content": "Answer with a number."},
    {"role": "user", "content": "What is 48213 * 9127?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "calculator", "arguments": "{\"expression\": \"48213 * 9127\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "440040051"},
    {"role": "assistant", "content": "440040051"},
]


@pytest.fixture(scope="module")
def tokenizer():
    text = ["What is 48213 * 9127? The calculator says 440040051.", "search the play for a line",
            '{"name": "calculator", "arguments": {"expression": "1+2"}}'] * 30
    return train_tokenizer("bpe", iter(text), vocab_size=400)


def test_rendered_text_is_exact():
    text = render_chat(TOOL_CHAT, tools=[CALC])
    want = ("<|im_start|>system\nAnswer with a number.\n\n<tools>\n"
            + json.dumps(CALC["function"]) + "\n</tools><|im_end|>\n"
            "<|im_start|>user\nWhat is 48213 * 9127?<|im_end|>\n"
            '<|im_start|>assistant\n<tool_call>{"name": "calculator", "arguments": {"expression": '
            '"48213 * 9127"}}</tool_call><|im_end|>\n'
            "<|im_start|>tool\n440040051<|im_end|>\n"
            "<|im_start|>assistant\n440040051<|im_end|>\n")
    assert text == want


def test_no_system_turn_gets_one_and_flattened_turns_render_the_same():
    msgs = TOOL_CHAT[1:]
    for tools in ([CALC], [CALC, SEARCH]):
        text = render_chat(msgs, tools=tools, add_generation_prompt=True)
        assert text.startswith("<|im_start|>system\n<tools>\n")
        assert text == render_chat(flatten_messages(msgs, check_tools(tools)), add_generation_prompt=True)
    assert render_chat(TOOL_CHAT[1:2]) == render_chat(TOOL_CHAT[1:2], tools=None)


def test_ids_equal_hugging_face_apply_chat_template_with_tools(tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    from lmlab.data.chat import CHAT_TEMPLATE

    tokenizer.save(tmp_path / "tokenizer.json")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    hf.chat_template = CHAT_TEMPLATE
    for msgs, gen in ((TOOL_CHAT, False), (TOOL_CHAT[1:2], True)):
        theirs = hf.apply_chat_template(msgs, tools=[CALC, SEARCH], tokenize=False, add_generation_prompt=gen)
        assert theirs == render_chat(msgs, tools=[CALC, SEARCH], add_generation_prompt=gen)


def test_mask_covers_the_call_and_the_answer(tokenizer):
    enc = encode_chat(tokenizer, TOOL_CHAT, tools=[CALC])
    learned = tokenizer.decode([i for i, m in zip(enc.ids, enc.assistant_mask) if m])
    assert learned.replace("<|im_end|>", "|") == (
        '<tool_call>{"name": "calculator", "arguments": {"expression": "48213 * 9127"}}'
        "</tool_call>|440040051|")


def test_parse_calls_content_and_errors():
    text = ('Let me compute. <tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}'
            "</tool_call>"
            '<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"x\\"}"}</tool_call>'
            "<tool_call>{oops</tool_call><tool_call>{\"name\": \"shell\", \"arguments\": {}}</tool_call>"
            '<tool_call>{"name": "calculator", "arguments": [1]}')
    p = parse_tool_calls(text, ["calculator", "search"])
    assert p.content == "Let me compute."
    assert [(c.name, c.arguments, c.error is None) for c in p.calls[:2]] == [
        ("calculator", {"expression": "2+2"}, True), ("search", {"query": "x"}, True)]
    assert "not valid JSON" in p.calls[2].error
    assert "no tool 'shell'" in p.calls[3].error
    assert "must be a JSON object" in p.calls[4].error
    assert parse_tool_calls("just text").calls == []
    call = p.calls[0].openai()
    assert call["type"] == "function" and json.loads(call["function"]["arguments"]) == {"expression": "2+2"}


@given(st.text(max_size=40), st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8),
                                               max_size=3))
def test_format_then_parse_round_trips(name_tail, args):
    name = "f_" + "".join(c for c in name_tail if c.isalnum() and c.isascii())[:20]
    p = parse_tool_calls("x" + format_call(name, args))
    assert p.content == "x" and p.calls[0].name == name and p.calls[0].arguments == args


def test_partial_open_holds_back_a_possible_call_start():
    assert partial_open("answer <tool") == len("<tool")
    assert partial_open("answer <") == 1
    assert partial_open("answer") == 0
    assert partial_open(CALL_OPEN[:-1]) == len(CALL_OPEN) - 1


@pytest.mark.parametrize("tools, message", [
    ([], "non-empty list"),
    ([{"type": "function"}], r"tools\[0\] must be"),
    ([{"type": "function", "function": {"name": "bad name!"}}], "1-64 letters"),
    ([CALC, CALC], "given twice"),
    ([{"type": "function", "function": {"name": "f", "parameters": "x"}}], "JSON Schema object"),
])
def test_bad_tools_are_one_line(tools, message):
    with pytest.raises(LmlabError, match=message):
        check_tools(tools)


def test_bad_tool_calls_in_messages_are_one_line(tokenizer):
    bad = [{"role": "user", "content": "hi", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}]
    with pytest.raises(LmlabError, match="tool_calls must be an assistant"):
        encode_chat(tokenizer, bad)
