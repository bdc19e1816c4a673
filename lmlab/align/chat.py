"""A chat with a fine-tuned model in the terminal: the chat template, streamed replies, the history
kept within the model's context.

Each user line becomes a user turn; the model's reply is sampled with the KV-cache decoder after the
assistant's generation prompt and ends at ``<|im_end|>`` (or the end-of-text token). Commands:
``/reset`` clears the conversation (the system message stays), ``/system TEXT`` sets the system
message and clears the conversation, ``/quit`` (or end of input) ends the chat. When the
conversation leaves less than ``max_new_tokens`` (or half the context, if less) for the reply, its
oldest turns are dropped (the last user turn alone may leave less: the reply is then shorter).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from lmlab.config import arg
from lmlab.errors import LmlabError

HELP = "commands: /reset (clear the conversation), /system TEXT (set the system message), /quit"


@dataclass
class ChatConfig:
    """Options of ``lmlab chat``."""

    ckpt: Path | None = arg(None, "the model: a run folder fine-tuned on conversations (lmlab sft)")
    system: str | None = arg(None, "a system message to start with")
    max_new_tokens: int = arg(256, "tokens per reply at most")
    temperature: float = arg(0.7, "sampling temperature (0: greedy)")
    top_k: int | None = arg(None, "sample from the k most likely tokens only")
    top_p: float | None = arg(0.95, "sample from the smallest set of tokens with this much probability")
    repetition_penalty: float = arg(1.0, "divide the logits of tokens already in the conversation by this")
    seed: int | None = arg(None, "seed of the sampling (reply i uses seed + i)")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")


@dataclass
class ChatSession:
    """A conversation with ``model``: the messages so far and how replies are sampled."""

    model: Any
    tokenizer: Any
    cfg: ChatConfig
    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    replies: int = 0

    def __post_init__(self) -> None:
        from lmlab.data.chat import FIX, IM_END, has_chat_tokens

        if not has_chat_tokens(self.tokenizer):
            raise LmlabError("the model's tokenizer has no chat tokens, so it was not fine-tuned to chat; "
                             f"run 'lmlab sft' on conversations first (or {FIX})")
        ends = [self.tokenizer.token_to_id(IM_END), self.tokenizer.eot_id]
        self.stop_ids = [int(t) for t in ends if t is not None]

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages = []

    def _prompt(self) -> tuple[list[int], int]:
        """Return the prompt ids of the conversation and the room for the reply, dropping the oldest
        turns while they leave less than ``max_new_tokens`` or half the context, whichever is less;
        raise LmlabError (and forget the turn)
        when the last user turn alone leaves no room."""
        from lmlab.data.chat import encode_chat

        block = self.model.config.block_size
        head = [{"role": "system", "content": self.system}] if self.system else []
        alone = encode_chat(self.tokenizer, head + self.messages[-1:], add_generation_prompt=True).ids
        if len(alone) >= block:
            self.messages = self.messages[:-1]
            raise LmlabError(f"the message is {len(alone)} tokens with the template, more than the model's "
                             f"context of {block}; send a shorter one")
        want = min(self.cfg.max_new_tokens, block // 2)
        while True:
            ids = encode_chat(self.tokenizer, head + self.messages, add_generation_prompt=True).ids
            room = min(self.cfg.max_new_tokens, block - len(ids))
            if room >= want or len(self.messages) <= 1:
                return ids, room
            self.messages = self.messages[2:]  # the oldest user turn and its reply

    def reply(self, text: str, stream: Callable[[str], None] | None = None) -> str:
        """Add the user turn ``text``, sample the assistant's reply (``stream`` gets each new piece of
        text), add it to the conversation and return it."""
        from lmlab.generate.decode import decode
        from lmlab.generate.text import IncrementalDecoder

        self.messages.append({"role": "user", "content": text})
        ids, room = self._prompt()
        pieces = IncrementalDecoder(self.tokenizer)
        c = self.cfg

        def on_token(_: int, token: int) -> bool:
            if token in self.stop_ids:
                return True
            piece = pieces.push(token)
            if piece and stream is not None:
                stream(piece)
            return False

        seed = None if c.seed is None else c.seed + self.replies
        self.replies += 1
        decode(self.model, [ids], room, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p,
               repetition_penalty=c.repetition_penalty, seed=seed, on_token=on_token)
        rest = pieces.flush()
        if rest and stream is not None:
            stream(rest)
        answer = pieces.text
        self.messages.append({"role": "assistant", "content": answer})
        return answer


def chat_loop(session: ChatSession, read: Callable[[], str | None], out: TextIO, interactive: bool) -> int:
    """Run the chat: read lines with ``read`` (None at end of input) until ``/quit``, write replies to
    ``out`` as ``assistant: TEXT`` lines (streamed); return the number of replies."""
    n = 0
    while True:
        line = read()
        if line is None:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            session.reset()
            out.write("(conversation cleared)\n")
        elif line == "/system" or line.startswith("/system "):
            session.system = line[len("/system"):].strip() or None
            session.reset()
            out.write("(system message set; conversation cleared)\n" if session.system
                      else "(system message removed; conversation cleared)\n")
        elif line.startswith("/"):
            out.write(f"(unknown command {line.split()[0]}; {HELP})\n")
        else:
            out.write("assistant: ")
            out.flush()
            try:
                session.reply(line, stream=lambda piece: (out.write(piece), out.flush()))
                n += 1
            except LmlabError as e:
                out.write(f"({e})")
            except KeyboardInterrupt:
                if not interactive:
                    raise
                session.messages = session.messages[:-1]  # the unanswered user turn
                out.write(" (interrupted)")
            out.write("\n")
        out.flush()
    return n


def chat(cfg: ChatConfig) -> int:
    """Load ``cfg.ckpt`` and chat on stdin/stdout; return the number of replies."""
    from lmlab.align.sft import load_decoder
    from lmlab.device import resolve_device

    if cfg.ckpt is None:
        raise LmlabError("give the model to chat with: lmlab chat --ckpt RUN")
    model, tokenizer = load_decoder(cfg.ckpt, resolve_device(cfg.device), what="chat")
    session = ChatSession(model.eval(), tokenizer, cfg, cfg.system)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {cfg.ckpt}; {HELP}", file=sys.stderr)

    def read() -> str | None:
        if interactive:
            try:
                return input("you: ")
            except EOFError:
                return None
        line = sys.stdin.readline()
        return line if line else None

    return chat_loop(session, read, sys.stdout, interactive)
