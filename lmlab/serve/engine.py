"""Continuous batching (Orca, vLLM): one scheduler thread that, between decode steps, admits
waiting requests (each prefilled alone) and drops the finished and the cancelled ones.

The batch itself is a backend (:mod:`lmlab.serve.backends`): a Transformer decoder's requests
share one KV cache, a slot (row) each, stepped by one forward; every other model that generates
(recurrent LMs, the NPLM, ELMo, Infini-attention decoders, encoder-decoders, any
:class:`~lmlab.generate.sequence.SequenceLM` such as the token n-gram) keeps one decode state per
request. Either way each row's logits equal its solo run's, so greedy output does not depend on
what else runs. Tokens are chosen with :func:`lmlab.generate.process_logits` /
:func:`lmlab.generate.select_next`, a seeded request with its own ``torch.Generator``; text and
stop strings with :class:`lmlab.generate.StopStrings`.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lmlab.errors import LmlabError
from lmlab.generate.sampling import check_settings, process_logits, select_next
from lmlab.generate.text import StopStrings
from lmlab.serve.backends import backend_for
from lmlab.serve.metrics import Metrics

log = logging.getLogger("lmlab.serve")


class QueueFull(LmlabError):
    """The engine's waiting queue is full: the client should retry later (HTTP 429)."""


@dataclass
class SamplingParams:
    """How one request decodes: ``temperature`` 0 is greedy; ``stop`` strings end the text before
    them, ``stop_ids`` (besides the engine's end-of-text ids) end it after the token; ``logprobs``:
    report each new token's log-probability and the ``logprobs`` most likely ones (None: none);
    ``prompt_logprobs``: the same for every prompt token after the first (echo; None: none)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    stop_ids: Sequence[int] = ()
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    ignore_eos: bool = False  # run to max_tokens through the end-of-text ids (benchmarks)


@dataclass
class TokenLogprob:
    """A token, its log-probability under the model (log-softmax of the raw logits) and the most
    likely tokens at its position as ``(id, logprob)``, best first."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Event:
    """What the engine reports about a request, in order: ``prompt`` (the prompt's logprobs, once,
    first entry None), then ``token`` (one new token: its text piece, possibly empty, and logprob),
    then one ``done`` (``finish_reason`` "stop", "length" or "cancelled") or ``error``."""

    kind: str
    text: str = ""
    token: int | None = None
    logprob: TokenLogprob | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    finish_reason: str | None = None
    message: str | None = None


@dataclass
class Request:
    """A submitted request; ``cancel()`` frees its slot at the next step (or drops it from the queue)."""

    id: int
    prompt: list[int]
    params: SamplingParams
    sink: Callable[[Event], None]
    cancelled: bool = False
    finished: bool = False
    submitted: float = 0.0  # perf_counter() at submission

    def cancel(self) -> None:
        """Ask the engine to stop this request; it reports ``done`` with finish_reason "cancelled"."""
        self.cancelled = True


@dataclass
class Output:
    """A request's events gathered: the text, new token ids, their logprobs, the prompt's logprobs
    and why it ended (``error`` set when the engine failed on it)."""

    text: str = ""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    finish_reason: str | None = None
    error: str | None = None

    def add(self, event: Event) -> bool:
        """Take in ``event``; return True when it was the last one."""
        if event.kind == "prompt":
            self.prompt_logprobs = event.prompt_logprobs
        elif event.kind == "token":
            self.text += event.text
            self.tokens.append(event.token)
            if event.logprob is not None:
                self.logprobs.append(event.logprob)
        elif event.kind == "done":
            self.finish_reason = event.finish_reason
            return True
        else:
            self.error = event.message
            return True
        return False


@dataclass
class _Running:
    """A request in the batch: the token it chose last (fed at the next step) and its text so far."""

    req: Request
    text: StopStrings
    ends: set[int]
    generator: torch.Generator | None
    last: int = 0
    produced: int = 0
    last_time: float = 0.0  # perf_counter() at the last token


class Engine:
    """Serve ``model`` to many requests at once: any lmlab model that generates (a Transformer
    decoder is batched in KV-cache slots, the others one decode state per request) or a
    :class:`~lmlab.generate.sequence.SequenceLM`.

    ``eos_ids`` end every request (the tokenizer's end-of-text); ``max_batch`` requests run together,
    ``max_queue`` more may wait (then :meth:`submit` raises :class:`QueueFull`);
    ``prefill_tokens``: prompt tokens prefilled between two decode steps (at least one request), so
    newcomers do not stall the running ones for long. :meth:`start` runs the scheduler thread.
    """

    def __init__(self, model: Any, tokenizer: Any, eos_ids: Sequence[int] = (), max_batch: int = 32,
                 max_queue: int = 64, prefill_tokens: int = 512):
        if max_batch < 1 or max_queue < 0:
            raise LmlabError(f"max_batch={max_batch} must be >= 1 and max_queue={max_queue} >= 0")
        self.backend = backend_for(model, max_batch)
        self.model, self.tokenizer = self.backend.model, tokenizer
        self.block_size: int | None = self.backend.block_size  # None: no context limit
        self.vocab_size = self.backend.vocab_size
        self.eos_ids = {int(e) for e in eos_ids}
        self.max_batch, self.max_queue, self.prefill_tokens = max_batch, max_queue, prefill_tokens
        self.device = self.backend.device
        self._waiting: collections.deque[Request] = collections.deque()
        self._running: list[_Running] = []
        self._cv = threading.Condition()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.metrics = Metrics()

    # ------------------------------------------------------------------ public
    def start(self) -> Engine:
        """Start the scheduler thread; return self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lmlab-serve-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the scheduler thread (requests still running or waiting are cancelled)."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def alive(self) -> bool:
        """True while the scheduler thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def slots(self) -> Any:
        """A Transformer decoder's :class:`~lmlab.serve.backends.SlotCache` (None for other models)."""
        return getattr(self.backend, "slots", None)

    def room(self, prompt_tokens: int, default: int = 256) -> int:
        """The most new tokens after a prompt of ``prompt_tokens``: what is left of the context, or
        ``default`` for a model without a context limit."""
        return default if self.block_size is None else max(self.block_size - prompt_tokens, 0)

    def load(self) -> dict[str, int]:
        """Return the number of running and waiting requests."""
        with self._cv:
            return {"running": len(self._running), "waiting": len(self._waiting)}

    def check(self, prompt: Sequence[int], params: SamplingParams) -> list[int]:
        """Return ``prompt`` as a list of ints after checking it and ``params`` (LmlabError naming the
        problem: empty prompt, ids outside the vocabulary, prompt + max_tokens beyond the context,
        bad sampling settings, what the model cannot do, such as an encoder-decoder's prompt logprobs)."""
        ids = [int(t) for t in prompt]
        if not ids:
            raise LmlabError("the prompt is empty; give at least one token")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise LmlabError(f"token id {bad[0]} is outside the model's vocabulary "
                             f"(0..{self.vocab_size - 1})")
        check_settings(params.max_tokens, params.temperature, params.top_k, params.top_p, 1.0)
        if self.block_size is not None and len(ids) + params.max_tokens > self.block_size:
            raise LmlabError(f"the prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                             f"model's context of {self.block_size} tokens; shorten the prompt or lower "
                             "max_tokens")
        self.backend.check(ids, params.max_tokens, params.prompt_logprobs is not None)
        return ids

    def submit(self, items: Sequence[tuple[Sequence[int], SamplingParams, Callable[[Event], None]]]
               ) -> list[Request]:
        """Queue ``(prompt ids, params, sink)`` items all together (or none: LmlabError for bad input,
        :class:`QueueFull` when they do not fit the queue); return their :class:`Request` handles.
        ``sink(event)`` is called from the engine thread with each :class:`Event`."""
        reqs = [Request(0, self.check(p, params), params, sink) for p, params, sink in items]
        with self._cv:
            if not self.alive:
                raise LmlabError("the engine is not running")
            if len(self._waiting) + len(reqs) > self.max_queue + max(0, self.max_batch - len(self._running)):
                raise QueueFull(f"the server's queue is full ({self.max_queue} waiting requests); "
                                "retry later")
            for r in reqs:
                r.id, r.submitted = next(self._ids), time.perf_counter()
                self._waiting.append(r)
            self._cv.notify_all()
        return reqs

    def generate(self, prompt: Sequence[int], params: SamplingParams, timeout: float | None = None) -> Output:
        """Run one request to its end and return its :class:`Output` (blocks the caller)."""
        out, done = Output(), threading.Event()

        def sink(event: Event) -> None:
            if out.add(event):
                done.set()

        self.submit([(prompt, params, sink)])
        if not done.wait(timeout):
            raise TimeoutError("the request did not finish in time")
        return out

    # ------------------------------------------------------------------ the scheduler
    def _loop(self) -> None:
        with torch.inference_mode():
            while self._round():
                pass  # each round does its work itself; False ends the loop
            for r in self._running:
                self._finish(r.req, "cancelled")
            for req in self._waiting:
                self._finish(req, "cancelled")

    def _round(self) -> bool:
        """Wait for work, then end the cancelled waiting requests, admit newcomers and run one decode
        step; return False when the engine stops. (A function of its own so that nothing of a round,
        such as the last request admitted, stays referenced while the engine waits idle.)"""
        with self._cv:
            while not self._stopping and not self._waiting and not self._running:
                self._cv.wait()
            if self._stopping:
                return False
            # a cancelled request leaves the queue now, not when a place frees up for it
            dropped = [r for r in self._waiting if r.cancelled]
            if dropped:
                self._waiting = collections.deque(r for r in self._waiting if not r.cancelled)
            newcomers, budget = [], self.prefill_tokens
            while self._waiting and len(self._running) + len(newcomers) < self.max_batch and \
                    (not newcomers or budget >= len(self._waiting[0].prompt)):
                budget -= len(self._waiting[0].prompt)
                newcomers.append(self._waiting.popleft())
        for req in dropped:
            self._finish(req, "cancelled")
        for req in newcomers:
            self._admit(req)
        self._drop_cancelled()
        if self._running:
            self._step()
        return True

    def _emit(self, req: Request, event: Event) -> None:
        try:
            req.sink(event)
        except Exception:  # a broken sink must not stop the engine
            log.exception("request %d: the event sink failed", req.id)
            req.cancelled = True

    def _finish(self, req: Request, reason: str) -> None:
        if not req.finished:
            req.finished = True
            with self.metrics.lock:
                self.metrics.finished[reason] += 1
            self._emit(req, Event("done", finish_reason=reason))

    def _fail(self, req: Request, message: str) -> None:
        if not req.finished:
            req.finished = True
            with self.metrics.lock:
                self.metrics.finished["error"] += 1
            self._emit(req, Event("error", message=message))

    def _admit(self, req: Request) -> None:
        """Prefill ``req`` alone, report its prompt logprobs, choose its first token and give it a row."""
        if req.cancelled:
            self._finish(req, "cancelled")
            return
        p = req.params
        try:
            scored, last, state = self.backend.prefill(req.prompt, p.prompt_logprobs is not None)
            with self.metrics.lock:
                self.metrics.prompt_tokens += len(req.prompt)
            if p.prompt_logprobs is not None:
                lp = scored[:-1].float().log_softmax(-1)
                entries = [None] + [_logprob(lp[i], t, p.prompt_logprobs)
                                    for i, t in enumerate(req.prompt[1:])]
                self._emit(req, Event("prompt", prompt_logprobs=entries))
            if p.max_tokens == 0:
                self._finish(req, "length")
                return
            generator = None
            if p.seed is not None and p.temperature > 0:
                generator = torch.Generator(device=self.device).manual_seed(p.seed)
            ends = (set() if p.ignore_eos else self.eos_ids) | {int(t) for t in p.stop_ids}
            run = _Running(req, StopStrings(self.tokenizer, p.stop), ends, generator)
            ended = self._choose([run], last)
            if ended:
                self._finish(req, ended[0][1])
                return
            self.backend.admit(state)
            self._running.append(run)
        except Exception as e:
            log.exception("request %d failed in prefill", req.id)
            self._fail(req, f"the model failed on this request ({type(e).__name__})")

    def _drop_cancelled(self) -> None:
        for i in reversed(range(len(self._running))):
            req = self._running[i].req
            if req.cancelled:
                self._remove(i)
                self._finish(req, "cancelled")

    def _remove(self, i: int) -> None:
        """Free row ``i``: the last running row moves into it."""
        self.backend.remove(i)
        self._running[i] = self._running[-1]
        self._running.pop()

    def _step(self) -> None:
        """One decode step of every running request; finished ones leave the batch."""
        n = len(self._running)
        try:
            logits = self.backend.step([r.last for r in self._running])
            with self.metrics.lock:
                self.metrics.batch_size.observe(n)
        except Exception as e:
            log.exception("a decode step failed")
            for r in self._running:
                self._fail(r.req, f"the model failed on this request ({type(e).__name__})")
            self._running.clear()
            self.backend.clear()
            return
        # a request leaves the batch before it reports its end: a client that has its answer is no
        # longer counted as running
        for i, reason in sorted(self._choose(self._running, logits), reverse=True):
            req = self._running[i].req
            self._remove(i)
            self._finish(req, reason)

    def _choose(self, rows: list[_Running], logits: torch.Tensor) -> list[tuple[int, str]]:
        """Choose each row's next token from ``logits (len(rows), V)``, report it; return the rows that
        ended as ``(index, finish reason)`` (the caller reports their end)."""
        greedy = select_next(logits, 0).tolist() if any(r.req.params.temperature == 0 for r in rows) else None
        now = time.perf_counter()
        with self.metrics.lock:
            m = self.metrics
            m.generation_tokens += len(rows)
            for r in rows:
                if r.produced:
                    m.inter_token.observe(now - r.last_time)
                else:
                    m.ttft.observe(now - r.req.submitted)
                r.last_time = now
        ended = []
        for i, r in enumerate(rows):
            p = r.req.params
            if p.temperature == 0:
                token = greedy[i]
            else:
                row = process_logits(logits[i:i + 1].float(), None, p.temperature, p.top_k, p.top_p)
                token = int(select_next(row, p.temperature, r.generator)[0])
            entry = _logprob(logits[i].float().log_softmax(-1), token, p.logprobs) if p.logprobs is not None \
                else None
            r.last, r.produced = token, r.produced + 1
            if token in r.ends:
                piece, reason = r.text.flush(), "stop"
            else:
                piece, stopped = r.text.push(token)
                reason = "stop" if stopped else None
                if reason is None and r.produced >= p.max_tokens:
                    piece, reason = piece + r.text.flush(), "length"
            self._emit(r.req, Event("token", text=piece, token=token, logprob=entry))
            if reason is not None or r.req.cancelled:
                ended.append((i, reason or "cancelled"))
        return ended


def _logprob(logp: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """The :class:`TokenLogprob` of ``token`` under log-probabilities ``logp (V,)`` with the ``top``
    most likely tokens."""
    best = torch.topk(logp, top) if top > 0 else None
    pairs = list(zip(best.indices.tolist(), best.values.tolist())) if best is not None else []
    return TokenLogprob(int(token), float(logp[token]), pairs)
