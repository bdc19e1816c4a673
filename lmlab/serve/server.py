"""``lmlab serve``: bind the port, load the models in the background and run the API under uvicorn.

The server listens before the model is loaded: until it is, every route (``/health`` included)
answers 503 with OpenAI's error JSON, so a client or a load balancer can tell "loading" from "down".
A checkpoint that does not load stops the server with its one-line error."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmlab.config import Precision, arg
from lmlab.errors import LmlabError
from lmlab.serve.pool import ModelPool, ModelSpec, check_name, discover_runs, parse_models

if TYPE_CHECKING:
    from lmlab.serve.app import Model, Served

LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOADING = "the model is loading; retry in a moment"


@dataclass
class ServeConfig:
    ckpt: list[str] = arg([], "the models: RUN or NAME=RUN (a run folder, model.safetensors or Hugging Face "
                              "folder of any model that generates, or a lineage RUN/ngram folder); repeat "
                              "--ckpt for several")
    host: str = arg("127.0.0.1", "address to listen on (without an API key only loopback is allowed)")
    port: int = arg(8000, "port to listen on")
    api_key: str | None = arg(None, "clients must send 'Authorization: Bearer KEY' (default: $LMLAB_API_KEY)")
    served_name: str | None = arg(None, "the model name clients ask for (default: the checkpoint's folder "
                                        "name)")
    max_batch: int = arg(32, "requests decoded together (continuous batching)")
    max_queue: int = arg(64, "requests that may wait for a place in the batch; more get HTTP 429")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: Precision = arg("auto", "model dtype (auto: as stored)")
    runs: Path | None = arg(None, "a folder of runs: every run in it is served (unless --ckpt names the "
                                  "models) and its reports are browsable at /reports")
    max_loaded: int = arg(2, "models in memory at once; the least recently used is unloaded to load another")


class Loading:
    """The ASGI app uvicorn serves: 503 ``the model is loading`` (OpenAI's error JSON, ``Retry-After``)
    on every route until ``load()`` returns, then the API of what it returned. :meth:`start` runs
    ``load`` on a background thread; a load that raises keeps the exception in :attr:`error` and calls
    ``on_error``."""

    def __init__(self, load: Callable[[], Served]):
        self._load = load
        self._lock = threading.Lock()
        self._stopped = False
        self.app: Any = None
        self.served: Served | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def start(self, on_error: Callable[[], None] = lambda: None) -> Loading:
        """Start loading on a background thread; return self."""
        threading.Thread(target=self._run, args=(on_error,), name="lmlab-serve-load", daemon=True).start()
        return self

    def _run(self, on_error: Callable[[], None]) -> None:
        from lmlab.serve.app import create_app

        try:
            served = self._load()
            app = create_app(served)
        except BaseException as e:  # noqa: BLE001 - re-raised by whoever runs the server
            self.error = e
            self.done.set()
            on_error()
            return
        with self._lock:
            if self._stopped:  # the server stopped while the model loaded
                served.stop()
            else:
                self.served, self.app = served, app
        self.done.set()

    def stop(self) -> None:
        """Stop the engine of what was loaded (and of what is still loading, once it is)."""
        with self._lock:
            self._stopped = True
            served = self.served
        if served is not None:
            served.stop()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        app = self.app
        if app is not None:
            await app(scope, receive, send)
        elif scope["type"] == "http":
            from lmlab.serve.protocol import error_body

            body = json.dumps(error_body(LOADING, "server_error", None, "model_loading")).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1013})  # try again later


@dataclass
class Running:
    """A server started by :func:`start_server`: its URL, what it is loading, and ``stop()``."""

    url: str
    server: Any
    thread: threading.Thread
    loading: Loading

    @property
    def engine(self) -> Any:
        """The engine of the first model in memory (None until one is loaded)."""
        served = self.loading.served
        models = list(served.pool.in_memory().values()) if served is not None else []
        return models[0].engine if models else None

    def stop(self) -> None:
        """Stop the HTTP server and the engine."""
        self.server.should_exit = True
        self.thread.join()
        self.loading.stop()


def api_key(cfg: ServeConfig) -> str | None:
    """The API key clients must send: ``--api-key``, else ``$LMLAB_API_KEY``, else None (no key)."""
    return cfg.api_key or os.environ.get("LMLAB_API_KEY") or None


def model_specs(cfg: ServeConfig) -> list[ModelSpec]:
    """The served models: the ``--ckpt`` items (one bare RUN takes ``--served-name``), else every
    run under ``--runs`` (LmlabError when there are none, or a checkpoint is missing)."""
    items = [str(cfg.ckpt)] if isinstance(cfg.ckpt, (str, Path)) else [str(c) for c in cfg.ckpt or []]
    if items:
        specs = parse_models(items)
        if cfg.served_name:
            if len(specs) > 1:
                raise LmlabError("--served-name names one model; name several with --ckpt NAME=RUN")
            specs = [ModelSpec(check_name(cfg.served_name, "--served-name"), specs[0].path)]
        return specs
    if cfg.runs is None:
        raise LmlabError("give --ckpt RUN (a run folder or a Hugging Face folder; NAME=RUN, repeatable) "
                         "or --runs DIR")
    return discover_runs(Path(cfg.runs))


def check(cfg: ServeConfig) -> list[ModelSpec]:
    """Check the settings that need no loading (LmlabError naming the problem and the fix); return the
    models to serve."""
    if cfg.runs is not None and not Path(cfg.runs).is_dir():
        raise LmlabError(f"--runs {cfg.runs} is not a folder; give the folder your runs were written to")
    if cfg.max_batch < 1 or cfg.max_queue < 0:
        raise LmlabError(f"--max-batch ({cfg.max_batch}) must be >= 1 and --max-queue ({cfg.max_queue}) >= 0")
    if cfg.max_loaded < 1:
        raise LmlabError(f"--max-loaded {cfg.max_loaded} must be at least 1")
    return model_specs(cfg)


def load_model(spec: ModelSpec, cfg: ServeConfig) -> Model:
    """Load ``spec``'s checkpoint and start its engine (LmlabError when it has no tokenizer or the model
    cannot generate, such as a BERT encoder). Any family that generates is served: Transformer
    decoders batched in KV-cache slots, the others (RNN/LSTM/GRU, NPLM, ELMo, Infini-attention,
    encoder-decoders, the lineage's token n-gram) one decode state per request."""
    from lmlab.device import resolve_device
    from lmlab.generate.steps import family
    from lmlab.loader import eos_ids, load_model_any, load_tokenizer_any
    from lmlab.ngram.token_lm import is_token_ngram_run, load_token_ngram
    from lmlab.serve.app import Model
    from lmlab.serve.cards import model_card
    from lmlab.serve.engine import Engine

    tokenizer = load_tokenizer_any(spec.path)
    if tokenizer is None:
        raise LmlabError(f"no tokenizer.json beside {spec.path}; copy the tokenizer the model was trained "
                         "with there")
    folder = spec.path if spec.path.is_dir() else spec.path.parent
    ends = eos_ids(spec.path, tokenizer)
    if is_token_ngram_run(folder):  # the lineage's token n-gram (RUN/ngram), on the cpu
        model = load_token_ngram(folder)
    else:
        model = load_model_any(spec.path, resolve_device(cfg.device), cfg.dtype)
        if family(model) == "encdec":  # a target ends at end-of-sequence, as lmlab.generate.decode ends it
            ends.append(model.config.eos_token_id)
    engine = Engine(model, tokenizer, ends, cfg.max_batch, cfg.max_queue).start()
    return Model(engine, tokenizer, spec.name, model_card(folder, model))


def build(cfg: ServeConfig) -> Served:
    """Return the :class:`~lmlab.serve.app.Served` of ``cfg``: its models in a pool that loads them on
    demand, the first one loaded now, so that a checkpoint that does not load is reported at start
    (LmlabError when it cannot generate or has no tokenizer, or the settings are bad)."""
    from lmlab.serve.app import Served

    specs = check(cfg)
    pool = ModelPool(specs, lambda spec: load_model(spec, cfg), cfg.max_loaded,
                     busy=lambda m: any(m.engine.load().values()))
    pool.get(specs[0].name)
    return Served(api_key=api_key(cfg), runs=Path(cfg.runs) if cfg.runs else None, pool=pool)


def start_server(served: Served | Callable[[], Served], host: str = "127.0.0.1", port: int = 0) -> Running:
    """Serve ``served`` from a background thread on ``host:port`` (0: a free port); return when it
    accepts connections. ``served`` may be a function that loads it: it then runs in the background
    while the server answers 503 (see :class:`Loading`), and this returns at once."""
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: without it each small response waits ~40 ms for Nagle's
    # algorithm and the client's delayed ACK (uvicorn sets it on the sockets it makes itself)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    loading = Loading(served if callable(served) else lambda: served).start()
    if not callable(served):
        loading.done.wait()
        if loading.error is not None:
            raise loading.error
    server = uvicorn.Server(uvicorn.Config(loading, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            loading.stop()
            raise LmlabError(f"the server could not start on {host}:{port}")
        threading.Event().wait(0.01)
    bound = sock.getsockname()[1]
    return Running(f"http://{host}:{bound}", server, thread, loading)


def serve(cfg: ServeConfig) -> None:
    """Listen on ``cfg.host:cfg.port`` at once, load the model meanwhile (503 until it is loaded) and
    serve until Ctrl-C; a checkpoint that does not load stops the server with its error (raised)."""
    import uvicorn

    specs = check(cfg)
    names = ", ".join(repr(sp.name) for sp in specs)
    key, host = api_key(cfg), cfg.host
    if key is None and host not in LOOPBACK:
        print(f"no API key (--api-key or LMLAB_API_KEY): listening on 127.0.0.1 only, not {host}",
              file=sys.stderr)
        host = "127.0.0.1"
    t0 = time.perf_counter()

    def load() -> Served:
        served = build(cfg)
        took = time.perf_counter() - t0
        print(f"loaded {specs[0].path} in {took:.1f} s; ready", file=sys.stderr, flush=True)
        return served

    loading = Loading(load)
    server = uvicorn.Server(uvicorn.Config(loading, host=host, port=cfg.port, log_level="warning",
                                           lifespan="off"))
    more = (f"; the others load when first asked for, at most {cfg.max_loaded} at once"
            if len(specs) > 1 else "")
    print(f"serving {names} on http://{host}:{cfg.port}/v1 "
          f"({'API key required' if key else 'no API key'}; batch {cfg.max_batch}, queue {cfg.max_queue}); "
          f"loading {specs[0].name!r}, /health answers 503 until it is ready{more}",
          file=sys.stderr, flush=True)
    loading.start(on_error=lambda: setattr(server, "should_exit", True))
    try:
        server.run()
    finally:
        loading.stop()
    if loading.error is not None:
        raise loading.error
