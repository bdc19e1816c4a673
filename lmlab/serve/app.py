"""The OpenAI-compatible HTTP API over an :class:`~lmlab.serve.engine.Engine` (FastAPI).

Routes: ``GET /health`` (public), ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (streaming as Server-Sent Events ending with ``data: [DONE]``),
``POST /tokenize``, ``POST /detokenize``, ``GET /tokenizer_info`` (vLLM's), ``GET /metrics``
(Prometheus text), ``GET /reports`` + ``/reports/{path}`` (the runs' reports, with ``--runs``;
:mod:`lmlab.serve.reports`) and the browser playground at ``/`` (public, see
:mod:`lmlab.serve.playground`). With an API key every route but ``/health`` and the playground wants
``Authorization: Bearer KEY``. Every error reaches the
client as OpenAI's error JSON (400 bad request, 401 key, 404 unknown model or route, 429 queue
full, 500 the model failed), never as a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from lmlab.data.chat import CHAT_TEMPLATE, IM_END, encode_chat
from lmlab.errors import LmlabError
from lmlab.generate.text import prompt_ids
from lmlab.serve.engine import Engine, Event, Output, QueueFull, SamplingParams
from lmlab.serve.playground import mount_playground
from lmlab.serve.pool import Holds, ModelPool, ModelSpec
from lmlab.serve.protocol import (
    MAX_STOP,
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    _Common,
    chat_logprobs,
    completion_logprobs,
    error_body,
)
from lmlab.serve.reports import mount_reports
from lmlab.serve.tool_calls import ToolStream, plan_tools, split_answer

log = logging.getLogger("lmlab.serve")
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 429: "rate_limit_error", 503: "server_error"}


class ApiError(Exception):
    """An error the client gets as OpenAI's JSON with HTTP ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


@dataclass
class Model:
    """One loaded model behind the API: its running engine, tokenizer, served name and card."""

    engine: Engine
    tokenizer: Any
    name: str
    card: dict[str, Any] | None = None  # serve/cards.py: family, parameters, training figures

    def stop(self) -> None:
        """Stop the engine (the pool unloads the model)."""
        self.engine.stop()


@dataclass
class Served:
    """What the server serves: a :class:`~lmlab.serve.pool.ModelPool` of models by name, the API key
    (None: no key needed) and the runs folder of ``/reports``. One model already running can be
    given as ``engine``, ``tokenizer``, ``name`` (and ``card``): the pool is made of it."""

    engine: Engine | None = None
    tokenizer: Any = None
    name: str = ""
    api_key: str | None = None
    created: int = 0
    runs: Path | None = None
    card: dict[str, Any] | None = None
    pool: ModelPool | None = None

    def __post_init__(self) -> None:
        if self.pool is None:
            if self.engine is None:
                raise ValueError("Served needs a pool or a running engine")
            one = Model(self.engine, self.tokenizer, self.name, self.card)
            self.pool = ModelPool([ModelSpec(self.name, Path(self.name))], lambda _: one, max_loaded=1)
            self.pool.get(self.name)

    def stop(self) -> None:
        """Stop every loaded model's engine."""
        self.pool.stop()


def create_app(served: Served) -> FastAPI:
    """Return the FastAPI app serving ``served`` (its models are loaded on demand by its pool)."""
    app = FastAPI(title="lmlab", docs_url=None, redoc_url=None, openapi_url=None)
    pool = served.pool
    created = served.created or int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(error_body(e.message, _TYPES.get(e.status, "server_error"), e.param, e.code),
                            status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or None
        message = f"{param}: {err['msg']}" if param else f"the request body is invalid: {err['msg']}"
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException) -> JSONResponse:
        route = e.status_code in (404, 405)
        message = f"no route {request.method} {request.url.path}" if route else str(e.detail)
        return JSONResponse(error_body(message, _TYPES.get(e.status_code, "server_error")),
                            status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _crash(_: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(error_body(f"internal server error ({type(e).__name__})", "server_error"),
                            status_code=500)

    def auth(authorization: str | None = Header(None)) -> None:
        if served.api_key is None:
            return
        scheme, _, key = (authorization or "").partition(" ")
        right = hmac.compare_digest(key.strip().encode(), served.api_key.encode())
        if scheme.lower() != "bearer" or not right:
            raise ApiError(401, "missing or wrong API key; send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    mount_reports(app, served.runs, auth)

    def load_model(name: str | None, holds: Holds | None = None) -> Model:
        """The model ``name`` (the only one when None), loaded if it is not (and held by ``holds``)."""
        if name is None or name == "":
            if len(pool.names) != 1:
                raise ApiError(400, f"give model: one of {', '.join(pool.names)}", "model")
            name = pool.names[0]
        if name not in pool.specs:
            raise ApiError(404, f"the model {name!r} does not exist; this server serves "
                                f"{', '.join(repr(n) for n in pool.names)}", "model", "model_not_found")
        try:
            return holds.get(name) if holds is not None else pool.get(name)
        except Exception as e:  # the pool keeps the error; the other models go on
            raise ApiError(503, f"the model {name!r} could not be loaded: {e}", "model",
                           "model_load_failed") from None

    async def model_for(name: str | None, holds: Holds | None = None) -> Model:
        if name in pool.loaded():
            return load_model(name, holds)
        return await asyncio.to_thread(load_model, name, holds)  # loading takes seconds: not on the loop

    async def holding() -> AsyncIterator[Holds]:
        """The models a generation request holds: from their load until the request ends (its work is
        in the engine by then, which keeps them busy), so a load for another request cannot unload
        them in between."""
        holds = Holds(pool)
        try:
            yield holds
        finally:
            holds.release()

    async def check(body: _Common, holds: Holds) -> Model:
        m = await model_for(body.model, holds)
        bad = body.unsupported()
        if bad:
            raise ApiError(400, f"{bad} is not supported by this server; leave it unset", bad)
        if len(body.stops()) > MAX_STOP:
            raise ApiError(400, f"stop has {len(body.stops())} strings; give at most {MAX_STOP}", "stop")
        return m

    def params(body: _Common, max_tokens: int, logprobs: int | None, echo_logprobs: int | None,
               stop_ids: list[int], choice: int) -> SamplingParams:
        return SamplingParams(max_tokens=max_tokens, temperature=body.temperature,
                              top_p=None if body.top_p >= 1.0 else body.top_p,
                              top_k=body.top_k if body.top_k and body.top_k > 0 else None,
                              seed=None if body.seed is None else body.seed + choice, stop=body.stops(),
                              stop_ids=stop_ids + list(body.stop_token_ids or []), logprobs=logprobs,
                              prompt_logprobs=echo_logprobs, ignore_eos=body.ignore_eos)

    def submit(engine: Engine, items: list[tuple[list[int], SamplingParams]]
               ) -> tuple[asyncio.Queue, list[Any]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def sink_for(i: int) -> Callable[[Event], None]:
            return lambda ev: loop.call_soon_threadsafe(queue.put_nowait, (i, ev))

        try:
            reqs = engine.submit([(ids, p, sink_for(i)) for i, (ids, p) in enumerate(items)])
        except QueueFull as e:
            raise ApiError(429, str(e), code="queue_full") from None
        except LmlabError as e:
            raise ApiError(400, str(e), "prompt") from None
        return queue, reqs

    async def events(queue: asyncio.Queue, reqs: list[Any],
                     request: Request) -> AsyncIterator[tuple[int, Event]]:
        """Yield ``(choice, event)`` until every request ended; a client that went away cancels them."""
        left = len(reqs)
        try:
            while left:
                try:
                    i, ev = await asyncio.wait_for(queue.get(), 1.0)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                if ev.kind in ("done", "error"):
                    left -= 1
                yield i, ev
        finally:
            for r in reqs:
                r.cancel()  # no-op for the finished ones; frees the slots of the rest

    def sse(obj: Any) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    async def cancel_on_disconnect(reqs: list[Any], request: Request) -> None:
        """Cancel ``reqs`` as soon as the client goes away (its request body is read: the next message
        can only be the disconnect)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass  # nothing but the disconnect can come after the read body
        for r in reqs:
            r.cancel()

    async def gather(queue: asyncio.Queue, reqs: list[Any], request: Request) -> list[Output]:
        outs = [Output() for _ in reqs]
        # events() only looks for a disconnect when no event came for a second; a busy batch sends
        # events all the time, so a non-streaming request watches its connection itself
        watch = asyncio.create_task(cancel_on_disconnect(reqs, request))
        try:
            async for i, ev in events(queue, reqs, request):
                outs[i].add(ev)
        finally:
            watch.cancel()
        failed = [o.error for o in outs if o.error]
        if failed:
            raise ApiError(500, failed[0])
        return outs

    def loaded() -> list[Model]:
        return list(pool.in_memory().values())

    @app.get("/health")
    async def health() -> Any:
        models = loaded()
        if any(not m.engine.alive for m in models):
            return JSONResponse(error_body("the engine is not running", "server_error"), status_code=503)
        loads = [m.engine.load() for m in models]
        return {"status": "ok", "running": sum(x["running"] for x in loads),
                "waiting": sum(x["waiting"] for x in loads), "loaded": [m.name for m in models]}

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models() -> Any:
        now = {m.name: m for m in loaded()}
        data = []
        for name, spec in pool.specs.items():
            entry: dict[str, Any] = {"id": name, "object": "model", "created": created, "owned_by": "lmlab"}
            m = now.get(name)
            if m is not None:
                entry["max_model_len"] = m.engine.block_size
            card = m.card if m is not None else unloaded_card(spec.path)
            if card is not None:  # the model card: family, parameters, tokenizer, training figures
                entry["lmlab"] = {**card, "loaded": m is not None, "evicted": name in pool.evicted,
                                  "error": pool.errors.get(name)}
            data.append(entry)
        return {"object": "list", "data": data}

    @app.get("/metrics", dependencies=[Depends(auth)])
    async def metrics() -> Any:
        texts = {}
        for m in loaded():
            load = m.engine.load()
            texts[m.name] = m.engine.metrics.render(load["running"], load["waiting"])
        return PlainTextResponse(merge_metrics(texts), media_type="text/plain; version=0.0.4")

    @app.post("/tokenize", dependencies=[Depends(auth)])
    async def tokenize(body: TokenizeRequest) -> Any:
        m = await model_for(body.model)
        engine, tok = m.engine, m.tokenizer
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "give either prompt (a string) or messages (a conversation)", "prompt")
        try:
            if body.messages is not None:
                ids = encode_chat(tok, body.messages, body.add_generation_prompt).ids
            else:
                ids = list(tok.hf.encode(body.prompt, add_special_tokens=body.add_special_tokens).ids)
        except LmlabError as e:
            raise ApiError(400, str(e), "messages") from None
        return {"count": len(ids), "max_model_len": engine.block_size, "tokens": ids}

    @app.post("/detokenize", dependencies=[Depends(auth)])
    async def detokenize(body: DetokenizeRequest) -> Any:
        m = await model_for(body.model)
        engine, tok = m.engine, m.tokenizer
        bad = [t for t in body.tokens if not 0 <= t < engine.vocab_size]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the vocabulary (0..{engine.vocab_size - 1})",
                           "tokens")
        return {"prompt": tok.decode(body.tokens)}

    @app.get("/tokenizer_info", dependencies=[Depends(auth)])
    async def tokenizer_info(model: str | None = None) -> Any:
        m = await model_for(model)
        engine, tok = m.engine, m.tokenizer
        eos = min(engine.eos_ids) if engine.eos_ids else None
        return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": engine.block_size,
                "vocab_size": engine.vocab_size, "eos_token_id": eos,
                "eos_token": tok.id_to_token(eos) if eos is not None else None,
                "chat_template": CHAT_TEMPLATE if tok.token_to_id(IM_END) is not None else None}

    @app.post("/v1/completions", dependencies=[Depends(auth)])
    async def completions(body: CompletionRequest, request: Request, holds: Holds = Depends(holding)) -> Any:
        m = await check(body, holds)
        engine, tok = m.engine, m.tokenizer

        def piece(token: int) -> str:
            return tok.decode([token])

        eos = engine.eos_ids
        raw = body.prompt
        if isinstance(raw, str):
            raw = [raw]
        if not raw:
            raise ApiError(400, "prompt is empty; give a string, a list of strings or token ids", "prompt")
        if isinstance(raw[0], int):
            raw = [raw]
        try:
            prompts = [prompt_ids(tok, p, eos) if isinstance(p, str) else list(p) for p in raw]
        except LmlabError as e:
            raise ApiError(400, str(e), "prompt") from None
        texts = [p if isinstance(p, str) else tok.decode(ids) for p, ids in zip(raw, prompts)]
        n, max_tokens = body.n, 16 if body.max_tokens is None else body.max_tokens
        echo_lp = body.logprobs if body.echo and body.logprobs is not None else None
        items = [(ids, params(body, max_tokens, body.logprobs, echo_lp, [], j))
                 for ids in prompts for j in range(n)]
        queue, reqs = submit(engine, items)
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def echo_part(k: int, out: Output) -> tuple[str, list]:
            if not body.echo:
                return "", []
            entries = list(zip(prompts[k], out.prompt_logprobs or [None] * len(prompts[k])))
            return texts[k], entries

        def choice_logprobs(k: int, out: Output, entries: list) -> dict[str, Any] | None:
            if body.logprobs is None:
                return None
            gen = [(e.token, e) for e in out.logprobs]
            return completion_logprobs(entries + gen, piece, 0)

        if not body.stream:
            outs = await gather(queue, reqs, request)
            choices = []
            for idx, out in enumerate(outs):
                k = idx // n
                head, entries = echo_part(k, out)
                choices.append({"index": idx, "text": head + out.text,
                                "logprobs": choice_logprobs(k, out, entries),
                                "finish_reason": out.finish_reason})
            return {"id": rid, "object": "text_completion", "created": now, "model": m.name,
                    "choices": choices,
                    "usage": usage(sum(len(p) for p in prompts), sum(len(o.tokens) for o in outs))}

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def stream() -> AsyncIterator[str]:
            made = 0
            offsets = [0] * len(reqs)

            def chunk(idx: int, text: str, lp: dict | None, reason: str | None) -> str:
                return sse({"id": rid, "object": "text_completion", "created": now, "model": m.name,
                            "choices": [{"index": idx, "text": text, "logprobs": lp,
                                         "finish_reason": reason}]})

            async for idx, ev in events(queue, reqs, request):
                k = idx // n
                if ev.kind == "prompt":
                    entries = list(zip(prompts[k], ev.prompt_logprobs))
                    lp = completion_logprobs(entries, piece, 0)
                    offsets[idx] = sum(len(t) for t in lp["tokens"])
                    yield chunk(idx, texts[k], lp, None)
                elif ev.kind == "token":
                    made += 1
                    lp = None
                    if ev.logprob is not None:
                        lp = completion_logprobs([(ev.token, ev.logprob)], piece, offsets[idx])
                        offsets[idx] += len(lp["tokens"][0])
                    if ev.text or lp is not None:
                        yield chunk(idx, ev.text, lp, None)
                elif ev.kind == "done":
                    yield chunk(idx, "", None, ev.finish_reason)
                else:
                    yield sse(error_body(ev.message or "the model failed", "server_error"))
            if include_usage:
                yield sse({"id": rid, "object": "text_completion", "created": now, "model": m.name,
                           "choices": [], "usage": usage(sum(len(p) for p in prompts), made)})
            yield "data: [DONE]\n\n"

        if body.echo and body.logprobs is None:
            # the prompt text still comes first: send it before the engine's events
            async def with_echo() -> AsyncIterator[str]:
                for idx in range(len(reqs)):
                    yield sse({"id": rid, "object": "text_completion", "created": now, "model": m.name,
                               "choices": [{"index": idx, "text": texts[idx // n], "logprobs": None,
                                            "finish_reason": None}]})
                async for s in stream():
                    yield s
            return StreamingResponse(with_echo(), media_type="text/event-stream")
        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat_completions(body: ChatRequest, request: Request, holds: Holds = Depends(holding)) -> Any:
        m = await check(body, holds)
        engine, tok = m.engine, m.tokenizer

        def piece(token: int) -> str:
            return tok.decode([token])

        messages = []
        for i, msg in enumerate(body.messages):
            content = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(content, list):  # content parts: the text ones, joined
                content = "".join(p.get("text", "") for p in content
                                  if isinstance(p, dict) and p.get("type") == "text")
            message = {"role": msg.get("role") if isinstance(msg, dict) else None, "content": content}
            calls = msg.get("tool_calls") if isinstance(msg, dict) else None
            if calls:
                message["tool_calls"] = calls
            messages.append(message)
            if not isinstance(content, str) and not (calls and content is None):
                raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts",
                               f"messages.{i}.content")
        try:
            plan = plan_tools(body.tools, body.tool_choice)
        except LmlabError as e:
            raise ApiError(400, str(e), "tool_choice" if "tool_choice" in str(e) else "tools") from None
        try:
            ids = encode_chat(tok, messages, add_generation_prompt=True, tools=plan.tools).ids
        except LmlabError as e:
            raise ApiError(400, str(e), "messages") from None
        if plan.prefill:  # the answer starts inside a call: encode it with the prompt, as one text
            ids = ids + list(tok.hf.encode(plan.prefill, add_special_tokens=False).ids)
        asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        max_tokens = asked if asked is not None else engine.room(len(ids))
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        end = tok.token_to_id(IM_END)
        items = [(ids, params(body, max_tokens, logprobs, None, [end], j)) for j in range(body.n)]
        queue, reqs = submit(engine, items)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        if not body.stream:
            outs = await gather(queue, reqs, request)
            choices = []
            for j, out in enumerate(outs):
                content, calls = split_answer(plan, out.text)
                message: dict[str, Any] = {"role": "assistant", "content": content}
                if calls:
                    message["tool_calls"] = [c.openai() for c in calls]
                lp = chat_logprobs(out.logprobs, piece) if logprobs is not None else None
                choices.append({"index": j, "message": message, "logprobs": lp,
                                "finish_reason": "tool_calls" if calls else out.finish_reason})
            return {"id": rid, "object": "chat.completion", "created": now, "model": m.name,
                    "choices": choices, "usage": usage(len(ids), sum(len(o.tokens) for o in outs))}

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(j: int, delta: dict[str, Any], lp: dict | None, reason: str | None) -> str:
            return sse({"id": rid, "object": "chat.completion.chunk", "created": now, "model": m.name,
                        "choices": [{"index": j, "delta": delta, "logprobs": lp, "finish_reason": reason}]})

        async def stream() -> AsyncIterator[str]:
            made = 0
            texts = [ToolStream(plan) for _ in range(body.n)]
            for j in range(body.n):
                yield chunk(j, {"role": "assistant", "content": ""}, None, None)
            async for j, ev in events(queue, reqs, request):
                if ev.kind == "token":
                    made += 1
                    lp = chat_logprobs([ev.logprob], piece) if ev.logprob is not None else None
                    text = texts[j].feed(ev.text)
                    if text or lp is not None:
                        yield chunk(j, {"content": text}, lp, None)
                elif ev.kind == "done":
                    rest, calls = texts[j].finish()
                    if rest:
                        yield chunk(j, {"content": rest}, None, None)
                    if calls:
                        delta = [{"index": k, **c.openai()} for k, c in enumerate(calls)]
                        yield chunk(j, {"tool_calls": delta}, None, None)
                    yield chunk(j, {}, None, "tool_calls" if calls else ev.finish_reason)
                elif ev.kind == "error":
                    yield sse(error_body(ev.message or "the model failed", "server_error"))
            if include_usage:
                yield sse({"id": rid, "object": "chat.completion.chunk", "created": now, "model": m.name,
                           "choices": [], "usage": usage(len(ids), made)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    mount_playground(app)
    return app


def unloaded_card(path: Path) -> dict[str, Any] | None:
    """The card of a model not in memory, from its run's files (None when they say nothing)."""
    from lmlab.serve.cards import model_card

    folder = path if path.is_dir() else path.parent
    return model_card(folder) if folder.exists() else None


def merge_metrics(texts: dict[str, str]) -> str:
    """Join the Prometheus texts of several models into one: each family's HELP and TYPE once, every
    sample labelled with its ``model`` (one model: its text unchanged)."""
    if len(texts) <= 1:
        return next(iter(texts.values()), "")
    families: dict[str, list[str]] = {}
    order: list[str] = []
    for name, text in texts.items():
        family = ""
        for line in text.splitlines():
            if line.startswith("# HELP "):
                family = line.split()[2]
                if family not in families:
                    families[family] = [line]
                    order.append(family)
            elif line.startswith("# TYPE "):
                if line not in families[family]:
                    families[family].append(line)
            elif line:
                metric, _, value = line.rpartition(" ")
                label = f'model="{name}"'
                metric = (metric.replace("{", "{" + label + ",", 1) if "{" in metric
                          else f"{metric}{{{label}}}")
                families[family].append(f"{metric} {value}")
    return "\n".join(line for f in order for line in families[f]) + "\n"
