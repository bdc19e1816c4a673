"""lmlab chat: replies under the chat template that stop at <|im_end|>, the history, /system,
/reset and /quit, streaming, the context limit; driven through the real CLI by piping stdin."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
import torch

import lmlab
from lmlab.align.chat import ChatConfig, ChatSession, chat_loop
from lmlab.align.sft import SFTConfig, sft
from lmlab.data.chat import encode_chat
from lmlab.data.tokenizers import train_tokenizer
from lmlab.errors import LmlabError
from lmlab.generate.decode import decode
from lmlab.models.registry import build_model, get_preset, save_model
from lmlab.train.options import OptimOptions

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models; a shared CPU
WORDS = ["red", "blue", "cat", "dog", "sun", "hi", "hello", "be brief"]


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory) -> Path:
    """A tiny LLaMA fine-tuned to answer every user turn with 'ok' and end its turn."""
    root = tmp_path_factory.mktemp("chat")
    rng = random.Random(0)
    rows = [{"messages": [{"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(3))},
                          {"role": "assistant", "content": "ok"}]} for _ in range(64)]
    (root / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = train_tokenizer("char", iter([json.dumps(r) for r in rows]))
    torch.manual_seed(0)
    model = build_model(get_preset("llama-tiny", vocab_size=tok.vocab_size, d_model=32, n_layer=1,
                                   block_size=96))
    save_model(model, root / "base" / "model.safetensors")
    tok.save(root / "base" / "tokenizer.json")
    sft(SFTConfig(ckpt=root / "base", data=root / "chats.jsonl", out=root / "sft", max_steps=40,
                  batch_size=16, optim=OptimOptions(lr=1e-2, min_lr=1e-3, warmup_steps=0, weight_decay=0.0),
                  precision="fp32", device="cpu", progress=False))
    return root / "sft"


def _greedy(model, tok, messages: list[dict], n: int = 6) -> list[int]:
    return decode(model, [encode_chat(tok, messages, add_generation_prompt=True).ids], n, temperature=0)[0]


def test_replies_stop_at_im_end_and_follow_the_conversation(chat_run):
    model, tok = lmlab.load(str(chat_run))
    session = ChatSession(model, tok, ChatConfig(temperature=0, max_new_tokens=8))
    pieces: list[str] = []
    assert session.reply("red cat", stream=pieces.append) == "ok"  # learned: 'ok', then <|im_end|>
    assert "".join(pieces) == "ok"
    # the second reply sees the first turn: the same ids as the whole conversation decoded greedily
    got = session.reply("hello")
    want = _greedy(model, tok, [{"role": "user", "content": "red cat"},
                                {"role": "assistant", "content": "ok"}, {"role": "user", "content": "hello"}])
    assert tok.encode(got) == [t for t in want if t not in session.stop_ids][:len(tok.encode(got))]
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]


def test_the_oldest_turns_are_dropped_to_fit_the_context(chat_run):
    model, tok = lmlab.load(str(chat_run))
    session = ChatSession(model, tok, ChatConfig(temperature=0, max_new_tokens=20))
    for _ in range(4):
        session.reply("blue dog sun")
    prompt = encode_chat(tok, session.messages[:-1], add_generation_prompt=True).ids
    assert len(prompt) + 20 <= model.config.block_size and len(session.messages) < 8
    with pytest.raises(LmlabError, match="more than the model's context of 96"):
        session.reply("x" * 200)
    assert session.messages[-1]["role"] == "assistant"  # the refused turn is not kept
    # a --max-new-tokens beyond the context keeps the turns that leave half of it for the reply
    session = ChatSession(model, tok, ChatConfig(temperature=0, max_new_tokens=1000))
    session.reply("red")
    session.reply("dog")
    prompt = encode_chat(tok, session.messages[:-1], add_generation_prompt=True).ids
    assert len(session.messages) == 4 and len(prompt) <= 48


def test_cli_chat_by_piping_stdin(chat_run, cli):
    model, tok = lmlab.load(str(chat_run))
    script = "red cat\n/system be brief\nhi\n\n/bogus\n/reset\nhi\n/quit\nnever answered\n"
    r = cli("chat", "--ckpt", chat_run, "--temperature", "0", "--max-new-tokens", "8", "--device", "cpu",
            input=script, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 6 and lines[:2] == ["assistant: ok", "(system message set; conversation cleared)"]
    assert lines[2].startswith("assistant: ") and lines[4:] == ["(conversation cleared)", lines[2]]
    assert lines[3].startswith("(unknown command /bogus;")
    # with the system message, the reply is the greedy continuation of [system, user]
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    want = _greedy(model, tok, messages, 8)
    end = next((i for i, t in enumerate(want) if t in (tok.token_to_id("<|im_end|>"), tok.eot_id)), len(want))
    assert lines[2] == "assistant: " + tok.decode(want[:end])


def test_a_tokenizer_without_chat_tokens_is_refused():
    class NoChat:  # e.g. a base model imported from Hugging Face
        eot_id = 0

        def token_to_id(self, token: str) -> None:
            return None

    with pytest.raises(LmlabError, match="no chat tokens, so it was not fine-tuned to chat; run 'lmlab sft'"):
        ChatSession(None, NoChat(), ChatConfig())


def test_chat_loop_ends_at_end_of_input():
    class Echo:  # the loop's contract with a session, without a model
        system = None
        messages: list = []

        def reset(self) -> None:
            self.messages = []

        def reply(self, text, stream=None):
            stream(text.upper())
            return text.upper()

    lines = iter(["a\n", "b\n"])
    out = io.StringIO()
    assert chat_loop(Echo(), lambda: next(lines, None), out, interactive=False) == 2
    assert out.getvalue() == "assistant: A\nassistant: B\n"
