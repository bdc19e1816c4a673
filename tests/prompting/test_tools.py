"""The tool loop: calls run and their results come back, malformed calls and tool errors go back to
the model as results and the loop goes on, the call limit and the context end it; with a real tiny
model that learned a calculator conversation, and with scripted turns for the edge cases."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lmlab.data.tools import format_call
from lmlab.errors import LmlabError
from lmlab.prompting.bm25 import BM25
from lmlab.prompting.tools import ERROR, calculator_tool, run_call, run_tool_loop, search_tool
from tests.align.conftest import make_tiny_base, memorise

pytestmark = pytest.mark.usefixtures("one_torch_thread")
QUESTION = [{"role": "user", "content": "What is 48213 * 9127?"}]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    import lmlab

    return lmlab.load(make_tiny_base(tmp_path_factory.mktemp("tok"), block_size=512))[1]


def scripted(monkeypatch, tokenizer, turns: list[str]) -> list[list[list[int]]]:
    """Make the decoder answer with ``turns`` in order (one per round, every row alike); return the
    prompts it was given."""
    import importlib

    decode_module = importlib.import_module("lmlab.generate.decode")  # the package re-exports decode()
    seen, it = [], iter(turns)

    def fake(model, prompts, max_new_tokens, **kw):
        seen.append(prompts)
        text = next(it)
        return [tokenizer.encode(text) + [tokenizer.token_to_id("<|im_end|>")] for _ in prompts]

    monkeypatch.setattr(decode_module, "decode", fake)
    return seen


MODEL = SimpleNamespace(config=SimpleNamespace(block_size=4096))


def test_malformed_calls_and_tool_errors_go_back_and_the_loop_goes_on(monkeypatch, tokenizer):
    turns = ["<tool_call>{broken</tool_call>",
             format_call("calculator", {"expression": "1/0"}),
             format_call("calculator", {"expression": "48213 * 9127"}),
             "440040051"]
    scripted(monkeypatch, tokenizer, turns)
    (run,) = run_tool_loop(MODEL, tokenizer, [QUESTION], [calculator_tool()], max_calls=3)
    results = [m["content"] for m in run.messages if m["role"] == "tool"]
    assert results[0].startswith(ERROR) and "not valid JSON" in results[0]
    assert results[1] == ERROR + "division by zero" and results[2] == "440040051"
    assert (run.answer, run.stopped, run.calls, run.failed_calls) == ("440040051", "answer", 3, 2)


def test_call_limit_and_context_end_the_loop(monkeypatch, tokenizer):
    call = format_call("calculator", {"expression": "2+2"})
    scripted(monkeypatch, tokenizer, [call] * 4)
    (run,) = run_tool_loop(MODEL, tokenizer, [QUESTION], [calculator_tool()], max_calls=2)
    assert (run.answer, run.stopped, run.calls) == (None, "max_calls", 2)
    scripted(monkeypatch, tokenizer, [call] * 10)
    tiny = SimpleNamespace(config=SimpleNamespace(block_size=300))
    (run,) = run_tool_loop(tiny, tokenizer, [QUESTION], [calculator_tool()], max_calls=10)
    assert run.stopped == "context" and run.answer is None


def test_without_tools_the_turn_is_the_answer(monkeypatch, tokenizer):
    seen = scripted(monkeypatch, tokenizer, [format_call("calculator", {"expression": "1+1"})])
    (run,) = run_tool_loop(MODEL, tokenizer, [QUESTION], None)
    assert run.stopped == "answer" and run.calls == 0 and run.answer.startswith("<tool_call>")
    assert "<tools>" not in tokenizer.decode(seen[0][0])


def test_tools_refuse_bad_arguments_and_search_finds():
    calc = calculator_tool()
    assert calc.run({"expression": "6*7"}) == "42"
    with pytest.raises(LmlabError, match="exactly"):
        calc.run({"expr": "6*7"})
    index = BM25(["Hamlet. Hamlet: To be, or not to be", "Macbeth. Macbeth: Tomorrow, and tomorrow",
                  "Othello. Iago: I am not what I am"])
    search = search_tool(index)
    assert search.run({"query": "tomorrow and tomorrow"}).startswith("Macbeth.")
    assert search.run({"query": "zebra"}) == "no results"
    from lmlab.data.tools import parse_tool_calls

    (unknown,) = parse_tool_calls(format_call("shell", {}), ["calculator"]).calls
    assert run_call(unknown, {"calculator": calc}).startswith(ERROR + "there is no tool 'shell'")
    assert json.loads(json.dumps(calc.spec()))["function"]["name"] == "calculator"


@pytest.mark.slow
def test_a_tiny_model_that_learned_a_call_runs_the_calculator(tmp_path):
    """A real model and decoder: it learned one conversation, the loop runs the real calculator (the
    fast tests script the turns; tests/serve/test_tools.py drives a real model's call fast)."""
    import lmlab

    tools = [calculator_tool()]
    conv = QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {
            "name": "calculator", "arguments": '{"expression": "48213 * 9127"}'}}]},
        {"role": "tool", "content": "440040051"}, {"role": "assistant", "content": "440040051"}]
    model, tok = lmlab.load(memorise(tmp_path / "run", conv, [t.spec() for t in tools]))
    model.eval()
    (run,) = run_tool_loop(model, tok, [QUESTION], tools, max_new_tokens=120)  # chars: the call is 88
    assert (run.answer, run.calls, run.failed_calls) == ("440040051", 1, 0)
    assert run.messages[-2] == {"role": "tool", "tool_call_id": run.messages[-3]["tool_calls"][0]["id"],
                                "content": "440040051"}
