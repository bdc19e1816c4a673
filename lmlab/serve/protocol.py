"""The OpenAI wire format the server speaks: request bodies (pydantic), the error body, and the
``logprobs`` objects of completions and chat completions (REFERENCE.md, "Serving and export")."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lmlab.serve.engine import TokenLogprob

MAX_N = 16  # choices per request
MAX_LOGPROBS = 20  # top tokens per position (vLLM's limit; OpenAI's is 5 for completions)
MAX_STOP = 4  # stop strings per request (OpenAI's limit)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """Return OpenAI's error JSON ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    """Fields completions and chat completions share; unknown fields are accepted and ignored
    (``user``, ``metadata``, ...), as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="allow")

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = None  # vLLM's extra; None, 0 or -1: off
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None  # vLLM's extra
    ignore_eos: bool = False  # vLLM's extra: generate max_tokens tokens through end-of-text
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    def unsupported(self) -> str | None:
        """Return the name of a field set to a value the server does not implement, else None."""
        if self.presence_penalty:
            return "presence_penalty"
        if self.frequency_penalty:
            return "frequency_penalty"
        if self.logit_bias:
            return "logit_bias"
        return None

    def stops(self) -> list[str]:
        """The stop strings as a list."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Common):
    """``POST /v1/completions``: ``prompt`` is a string, a list of strings, token ids or a list of
    token-id lists."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False


class ChatRequest(_Common):
    """``POST /v1/chat/completions``."""

    messages: list[dict[str, Any]]
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


def completion_logprobs(entries: Sequence[tuple[int, TokenLogprob | None]], piece: Callable[[int], str],
                        offset: int) -> dict[str, Any]:
    """Return a completion's ``logprobs`` object ``{tokens, token_logprobs, top_logprobs, text_offset}``
    for ``(token, logprob)`` entries (None: nothing predicts it, the prompt's first token);
    ``piece(id)`` is a token's text, ``offset`` the first token's character offset in the text."""
    tokens, values, tops, offsets = [], [], [], []
    for token, lp in entries:
        text = piece(token)
        tokens.append(text)
        values.append(None if lp is None else lp.logprob)
        tops.append(None if lp is None else {piece(t): v for t, v in lp.top})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(entries: Sequence[TokenLogprob], piece: Callable[[int], str]) -> dict[str, Any]:
    """Return a chat choice's ``logprobs`` object ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""

    def one(token: int, value: float) -> dict[str, Any]:
        text = piece(token)
        return {"token": text, "logprob": value, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**one(e.token, e.logprob), "top_logprobs": [one(t, v) for t, v in e.top]}
                        for e in entries]}


class TokenizeRequest(BaseModel):
    """``POST /tokenize``: a ``prompt`` or chat ``messages`` (with the generation prompt by default)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool = True


class DetokenizeRequest(BaseModel):
    """``POST /detokenize``: token ids to text."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    tokens: list[int]
