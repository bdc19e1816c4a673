"""lmlab sft end to end: the loss falls, only assistant tokens are learned, the model learns to end
its turn with <|im_end|>, and bad conversations are one line naming the file and line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import lmlab
from lmlab.align.sft import IGNORE, encode_for_sft, pack, read_conversations, sft_loss
from lmlab.cli import main
from lmlab.data.chat import IM_END, encode_chat
from lmlab.data.tokenizers import train_tokenizer
from lmlab.errors import LmlabError
from lmlab.models.registry import build_model, get_preset, save_model
from tests.align.conftest import assert_resume_is_exact
from tests.markdown_tables import tables

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models; a shared CPU
WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]


def _conversations(n: int, seed: int = 0) -> list[dict]:
    """The task: repeat the user's last word (the answer is short, so the model must also stop)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(3)]
        rows.append({"messages": [{"role": "user", "content": "say the last: " + " ".join(words)},
                                  {"role": "assistant", "content": words[-1]}]})
    return rows


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A random tiny LLaMA with a char tokenizer (which carries the chat tokens)."""
    run = tmp_path_factory.mktemp("base")
    texts = [json.dumps(r) for r in _conversations(50)] + WORDS
    tok = train_tokenizer("char", iter(texts))
    torch.manual_seed(0)
    model = build_model(get_preset("llama-tiny", vocab_size=tok.vocab_size, d_model=48, n_layer=2,
                                   block_size=128))
    save_model(model, run / "model.safetensors")
    tok.save(run / "tokenizer.json")
    return run


def test_sft_learns_the_answer_and_to_end_the_turn(base, tmp_path, capsys):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _conversations(400)))
    out = tmp_path / "sft"
    args = ["sft", "--ckpt", str(base), "--data", str(data), "--out", str(out), "--max-steps", "150",
            "--batch-size", "16", "--lr", "3e-3", "--precision", "fp32", "--device", "cpu", "--no-progress",
            "--eval-interval", "150", "--json"]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["step"] == 150 and r["val_conversations"] > 0
    assert r["val_loss"] < 0.5 * r["first_loss"]
    report = (out / "report.md").read_text()  # the figures of --json, the settings and the loss curve
    results = {row["metric"]: row for row in tables(report)["metric"]}
    assert float(results["loss"]["validation"]) == pytest.approx(r["val_loss"], abs=1e-4)
    assert float(results["first loss"]["training"]) == pytest.approx(r["first_loss"], abs=1e-4)
    assert int(results["conversations"]["validation"]) == r["val_conversations"]
    assert "- max steps: `150`" in report and "](curves.png)" in report
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    model, tok = lmlab.load(str(out))
    end = tok.token_to_id(IM_END)
    hits = 0
    for row in _conversations(20, seed=99):
        prompt = encode_chat(tok, row["messages"][:1], add_generation_prompt=True).ids
        ids = torch.tensor([prompt])
        for _ in range(8):  # greedy, by hand: the answer, then <|im_end|>
            nxt = int(model(ids)[0, -1].argmax())
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
            if nxt == end:
                break
        answer = tok.decode(ids[0, len(prompt):].tolist())
        hits += answer == row["messages"][1]["content"] + IM_END
    assert hits >= 15  # answers and stops


def test_only_assistant_tokens_are_targets(base, tmp_path):
    data = tmp_path / "c.jsonl"
    data.write_text(json.dumps({"prompt": "say the last: red dog", "completion": "dog"}) + "\n")
    tok = lmlab.load(str(base))[1]
    x, y = encode_for_sft(tok, data, read_conversations(data), 128)
    learned = [t for t in y[0] if t != -100]
    assert tok.decode(learned) == "dog" + IM_END and len(x[0]) == len(y[0])


@pytest.mark.parametrize("line, message", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "ends without an assistant turn"),
    ({"text": "hi"}, "has neither 'messages' nor 'prompt' and 'completion'"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "message 0: expected"),
])
def test_bad_conversations_are_one_line(base, tmp_path, capsys, line, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n" + json.dumps(line) + "\n")
    assert main(["sft", "--ckpt", str(base), "--data", str(data), "--out", str(tmp_path / "x"),
                 "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{data}:2" in err and message in err and err.count("\n") == 1


def test_sft_resumes_exactly(base, tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _conversations(60)))
    common = ["sft", "--ckpt", str(base), "--data", str(data), "--max-steps", "6", "--batch-size", "4",
              "--precision", "fp32", "--device", "cpu", "--no-progress", "--deterministic"]
    assert_resume_is_exact(common, tmp_path)


def test_plain_template_learns_the_completion_and_end_of_text(base, tmp_path):
    data = tmp_path / "c.jsonl"
    data.write_text(json.dumps({"prompt": "say the last: red dog", "completion": " dog"}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "hi"},
                                               {"role": "assistant", "content": "red"}]}) + "\n")
    tok = lmlab.load(str(base))[1]
    x, y = encode_for_sft(tok, data, read_conversations(data), 128, template="plain")
    assert x[0] == [tok.eot_id] + tok.encode("say the last: red dog") + tok.encode(" dog")
    assert [t for t in y[0] if t != IGNORE] == tok.encode(" dog") + [tok.eot_id]
    # a messages record stays a chat whatever the template (as in prompts.py)
    chat_x, chat_y = encode_for_sft(tok, data, read_conversations(data)[1:], 128, template="chat")
    assert (x[1], y[1]) == (chat_x[0], chat_y[0])
    assert tok.decode([t for t in y[1] if t != IGNORE]) == "red" + IM_END


def test_packing_keeps_every_target_and_fits_max_len(base, tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _conversations(30)))
    tok = lmlab.load(str(base))[1]
    x, y = encode_for_sft(tok, data, read_conversations(data), 128)
    px, py = pack(x, y, 100)
    assert len(px) < len(x) and all(len(r) <= 100 for r in px)
    assert sum(px, []) == sum(x, []) and sum(py, []) == sum(y, [])  # the same pairs, in order
    assert all(len(a) == len(b) for a, b in zip(px, py))
    assert pack(x, y, 1) == (x, y)  # an example is never split, even when it exceeds the row


def test_a_batch_without_targets_is_refused(base):
    model = lmlab.load(str(base))[0]
    batch = {"input_ids": torch.zeros(2, 5, dtype=torch.long), "labels": torch.full((2, 5), IGNORE)}
    with pytest.raises(LmlabError, match="a batch has no target token"):
        sft_loss(model, batch)
    batch["labels"][1, 3] = 4
    assert torch.isfinite(sft_loss(model, batch))


def test_packed_plain_sft_trains(base, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    rows = _conversations(200)
    pairs = [{"prompt": r["messages"][0]["content"], "completion": " " + r["messages"][1]["content"]}
             for r in rows]
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    out = tmp_path / "sft"
    assert main(["sft", "--ckpt", str(base), "--data", str(data), "--out", str(out), "--template", "plain",
                 "--pack", "--max-len", "96", "--max-steps", "30", "--batch-size", "4", "--lr", "3e-3",
                 "--precision", "fp32", "--device", "cpu", "--no-progress", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["train_rows"] < r["train_conversations"] / 2 and r["val_loss"] < 0.7 * r["first_loss"]
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["template"] == "plain" and cfg["pack"] is True


def test_records_with_tools_list_them_and_learn_the_calls(tmp_path):
    tools = [{"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}]
    record = {"tools": tools, "messages": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "2+2"}}}]},
        {"role": "tool", "content": "4"}, {"role": "assistant", "content": "4"}]}
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps(record) + "\n")
    (conv,) = read_conversations(path)
    tok = train_tokenizer("char", iter([json.dumps(record)]))
    inputs, targets = encode_for_sft(tok, path, [conv], max_len=400)
    learned = tok.decode([t for t in targets[0] if t != IGNORE])
    assert learned == ('<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>'
                       f"{IM_END}4{IM_END}")
    assert "<tools>" in tok.decode(inputs[0])
    path.write_text(json.dumps({**record, "tools": [{"type": "function", "function": {}}]}) + "\n")
    with pytest.raises(LmlabError, match=r"tools.jsonl:1: tools\[0\].function.name"):
        read_conversations(path)
