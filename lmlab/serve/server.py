"""``lmlab serve``: load a decoder, start the engine and run the API under uvicorn."""

from __future__ import annotations

import os
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmlab.config import Precision, arg
from lmlab.errors import LmlabError

if TYPE_CHECKING:
    from lmlab.serve.app import Served

LOOPBACK = ("127.0.0.1", "localhost", "::1")


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


@dataclass
class Running:
    """A server started by :func:`start_server`: its URL, and ``stop()``."""

    url: str
    server: Any
    thread: threading.Thread
    engine: Any

    def stop(self) -> None:
        """Stop the HTTP server and the engine."""
        self.server.should_exit = True
        self.thread.join()
        self.engine.stop()


def build(cfg: ServeConfig) -> Served:
    """Load ``cfg.ckpt``, start its engine and return the :class:`~lmlab.serve.app.Served` (LmlabError
    when the checkpoint is not a decoder with a tokenizer, or the settings are bad)."""
    from lmlab.device import resolve_device
    from lmlab.loader import eos_ids, load_model_any, load_tokenizer_any
    from lmlab.serve.app import Served
    from lmlab.serve.engine import Engine

    if cfg.ckpt is None:
        raise LmlabError("give --ckpt RUN (a run folder or a Hugging Face folder)")
    if not Path(cfg.ckpt).exists():
        raise LmlabError(f"{cfg.ckpt} does not exist; give a run directory, a model.safetensors or a "
                         "Hugging Face folder")
    tokenizer = load_tokenizer_any(cfg.ckpt)
    if tokenizer is None:
        raise LmlabError(f"no tokenizer.json beside {cfg.ckpt}; copy the tokenizer the model was trained "
                         "with there")
    model = load_model_any(cfg.ckpt, resolve_device(cfg.device), cfg.dtype)
    engine = Engine(model, tokenizer, eos_ids(cfg.ckpt, tokenizer), cfg.max_batch, cfg.max_queue).start()
    folder = Path(cfg.ckpt) if Path(cfg.ckpt).is_dir() else Path(cfg.ckpt).parent
    key = cfg.api_key or os.environ.get("LMLAB_API_KEY") or None
    return Served(engine, tokenizer, cfg.served_name or folder.resolve().name, key)


def start_server(served: Served, host: str = "127.0.0.1", port: int = 0) -> Running:
    """Serve ``served`` from a background thread on ``host:port`` (0: a free port); return when it
    accepts connections."""
    import uvicorn

    from lmlab.serve.app import create_app

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(create_app(served), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise LmlabError(f"the server could not start on {host}:{port}")
        threading.Event().wait(0.01)
    bound = sock.getsockname()[1]
    return Running(f"http://{host}:{bound}", server, thread, served.engine)


def serve(cfg: ServeConfig) -> None:
    """Run the server in the foreground until Ctrl-C."""
    import uvicorn

    from lmlab.serve.app import create_app

    if cfg.max_batch < 1 or cfg.max_queue < 0:
        raise LmlabError(f"--max-batch ({cfg.max_batch}) must be >= 1 and --max-queue ({cfg.max_queue}) >= 0")
    served = build(cfg)
    host = cfg.host
    if served.api_key is None and host not in LOOPBACK:
        print(f"no API key (--api-key or LMLAB_API_KEY): listening on 127.0.0.1 only, not {host}",
              file=sys.stderr)
        host = "127.0.0.1"
    print(f"serving {served.name!r} on http://{host}:{cfg.port}/v1 "
          f"({'API key required' if served.api_key else 'no API key'}; batch {cfg.max_batch}, "
          f"queue {cfg.max_queue})", file=sys.stderr, flush=True)
    try:
        uvicorn.run(create_app(served), host=host, port=cfg.port, log_level="warning")
    finally:
        served.engine.stop()
