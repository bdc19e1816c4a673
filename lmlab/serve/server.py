"""``lmlab serve``: bind the port, load the decoder in the background and run the API under uvicorn.

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

if TYPE_CHECKING:
    from lmlab.serve.app import Served

LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOADING = "the model is loading; retry in a moment"


@dataclass
class ServeConfig:
    ckpt: Path | None = arg(None, "run folder, model.safetensors, or Hugging Face model folder (a decoder)")
    host: str = arg("127.0.0.1", "address to listen on (without an API key only loopback is allowed)")
    port: int = arg(8000, "port to listen on")
    api_key: str | None = arg(None, "clients must send 'Authorization: Bearer KEY' (default: $LMLAB_API_KEY)")
    served_name: str | None = arg(None, "the model name clients ask for (default: the checkpoint's folder "
                                        "name)")
    max_batch: int = arg(32, "requests decoded together (continuous batching)")
    max_queue: int = arg(64, "requests that may wait for a place in the batch; more get HTTP 429")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: Precision = arg("auto", "model dtype (auto: as stored)")
    runs: Path | None = arg(None, "a folder of runs whose reports (report.md, samples.md and their plots) "
                                  "are browsable at /reports")


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
                served.engine.stop()
            else:
                self.served, self.app = served, app
        self.done.set()

    def stop(self) -> None:
        """Stop the engine of what was loaded (and of what is still loading, once it is)."""
        with self._lock:
            self._stopped = True
            served = self.served
        if served is not None:
            served.engine.stop()

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
        """The running engine (None until the model is loaded)."""
        return self.loading.served.engine if self.loading.served is not None else None

    def stop(self) -> None:
        """Stop the HTTP server and the engine."""
        self.server.should_exit = True
        self.thread.join()
        self.loading.stop()


def api_key(cfg: ServeConfig) -> str | None:
    """The API key clients must send: ``--api-key``, else ``$LMLAB_API_KEY``, else None (no key)."""
    return cfg.api_key or os.environ.get("LMLAB_API_KEY") or None


def served_name(cfg: ServeConfig) -> str:
    """The model name clients ask for: ``--served-name``, else the checkpoint's folder name."""
    folder = Path(cfg.ckpt) if Path(cfg.ckpt).is_dir() else Path(cfg.ckpt).parent
    return cfg.served_name or folder.resolve().name


def check(cfg: ServeConfig) -> None:
    """Check the settings that need no loading (LmlabError naming the problem and the fix)."""
    if cfg.ckpt is None:
        raise LmlabError("give --ckpt RUN (a run folder or a Hugging Face folder)")
    if not Path(cfg.ckpt).exists():
        raise LmlabError(f"{cfg.ckpt} does not exist; give a run directory, a model.safetensors or a "
                         "Hugging Face folder")
    if cfg.runs is not None and not Path(cfg.runs).is_dir():
        raise LmlabError(f"--runs {cfg.runs} is not a folder; give the folder your runs were written to")
    if cfg.max_batch < 1 or cfg.max_queue < 0:
        raise LmlabError(f"--max-batch ({cfg.max_batch}) must be >= 1 and --max-queue ({cfg.max_queue}) >= 0")


def build(cfg: ServeConfig) -> Served:
    """Load ``cfg.ckpt``, start its engine and return the :class:`~lmlab.serve.app.Served` (LmlabError
    when the checkpoint is not a decoder with a tokenizer, or the settings are bad)."""
    from lmlab.device import resolve_device
    from lmlab.loader import eos_ids, load_model_any, load_tokenizer_any
    from lmlab.serve.app import Served
    from lmlab.serve.engine import Engine

    check(cfg)
    tokenizer = load_tokenizer_any(cfg.ckpt)
    if tokenizer is None:
        raise LmlabError(f"no tokenizer.json beside {cfg.ckpt}; copy the tokenizer the model was trained "
                         "with there")
    model = load_model_any(cfg.ckpt, resolve_device(cfg.device), cfg.dtype)
    engine = Engine(model, tokenizer, eos_ids(cfg.ckpt, tokenizer), cfg.max_batch, cfg.max_queue).start()
    from lmlab.serve.cards import model_card

    folder = Path(cfg.ckpt) if Path(cfg.ckpt).is_dir() else Path(cfg.ckpt).parent
    runs = Path(cfg.runs) if cfg.runs else None
    card = model_card(folder, model)
    return Served(engine, tokenizer, served_name(cfg), api_key(cfg), runs=runs, card=card)


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

    check(cfg)
    key, host = api_key(cfg), cfg.host
    if key is None and host not in LOOPBACK:
        print(f"no API key (--api-key or LMLAB_API_KEY): listening on 127.0.0.1 only, not {host}",
              file=sys.stderr)
        host = "127.0.0.1"
    t0 = time.perf_counter()

    def load() -> Served:
        served = build(cfg)
        print(f"loaded {cfg.ckpt} in {time.perf_counter() - t0:.1f} s; ready", file=sys.stderr, flush=True)
        return served

    loading = Loading(load)
    server = uvicorn.Server(uvicorn.Config(loading, host=host, port=cfg.port, log_level="warning",
                                           lifespan="off"))
    print(f"serving {served_name(cfg)!r} on http://{host}:{cfg.port}/v1 "
          f"({'API key required' if key else 'no API key'}; batch {cfg.max_batch}, queue {cfg.max_queue}); "
          "loading the model, /health answers 503 until it is ready", file=sys.stderr, flush=True)
    loading.start(on_error=lambda: setattr(server, "should_exit", True))
    try:
        server.run()
    finally:
        loading.stop()
    if loading.error is not None:
        raise loading.error
