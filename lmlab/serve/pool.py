"""Several models behind one server: which checkpoints are served under which names, and which of
them are in memory.

:func:`parse_models` reads ``--ckpt NAME=RUN`` items (a bare ``RUN`` is named after its folder) and
:func:`discover_runs` finds every run folder under ``--runs DIR`` that holds a model and a
tokenizer. A :class:`ModelPool` loads a model the first time a request names it, keeps at most
``max_loaded`` in memory and unloads the least recently used one to make room (it is reloaded when
asked for again, and listed in :attr:`ModelPool.evicted` until then); a model that fails to load
reports its error to the requests that asked for it and is tried again on the next request, while the
others go on.
"""

from __future__ import annotations

import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

_NAME = re.compile(r"^[^\s\x00-\x1f\x7f/][^\x00-\x1f\x7f]{0,126}(?<!\s)$")  # printable, no '/' first
# an lmlab run, a Hugging Face folder, or a token n-gram run (lmlab.ngram.token_lm)
MODEL_FILES = ("model.safetensors", "config.json", "ngram.json")


@dataclass(frozen=True)
class ModelSpec:
    """A served model: the name clients ask for and the checkpoint it loads."""

    name: str
    path: Path


def check_name(name: str, where: str) -> str:
    """Return ``name`` if it can be a served model name, else raise LmlabError naming ``where``."""
    if not _NAME.match(name):
        raise LmlabError(f"{where}: the model name {name!r} must be 1-127 printable characters, not starting "
                         "with '/' or a space (pages show every name as text)")
    return name


def parse_models(items: Sequence[str]) -> list[ModelSpec]:
    """Return the models of ``--ckpt`` items ``NAME=RUN`` or ``RUN`` (named after the run's folder);
    raise LmlabError for a missing checkpoint or a name given twice."""
    specs: list[ModelSpec] = []
    for item in items:
        # NAME=RUN splits at the first '=' after which an existing path follows (names and paths may
        # both hold '='); an item that exists as a path, or has no '=', is a bare RUN
        cuts = [i for i, c in enumerate(item) if c == "="]
        cut = next((i for i in cuts if Path(item[i + 1:]).exists()), cuts[0] if cuts else None)
        if Path(item).exists() or cut is None or cut == 0:
            name, path = "", item
        else:
            name, path = item[:cut], item[cut + 1:]
        p = Path(path)
        if not p.exists():
            raise LmlabError(f"--ckpt {item}: {p} does not exist; give a run folder, a model.safetensors or "
                             "a Hugging Face folder")
        folder = p if p.is_dir() else p.parent
        specs.append(ModelSpec(check_name(name or folder.resolve().name, f"--ckpt {item}"), p))
    return _unique(specs)


def discover_runs(root: Path) -> list[ModelSpec]:
    """Return a model for every folder under ``root`` (at any depth, sorted) that holds a model file
    (``model.safetensors``, a Hugging Face ``config.json`` with weights or a token n-gram's
    ``ngram.json``) and a ``tokenizer.json``,
    named by its path relative to ``root`` with '/' written as '.'; raise LmlabError when there is none."""
    root = Path(root)
    if not root.is_dir():
        raise LmlabError(f"--runs {root} is not a folder; give the folder your runs are in")
    specs = []
    for tok in sorted(root.rglob("tokenizer.json")):
        folder = tok.parent
        if not any((folder / f).is_file() for f in MODEL_FILES):
            continue
        rel = folder.relative_to(root)
        name = ".".join(rel.parts) if rel.parts else root.resolve().name
        specs.append(ModelSpec(check_name(name, f"--runs {root}"), folder))
    if not specs:
        raise LmlabError(f"no run under {root} holds a model.safetensors (or config.json) and a "
                         "tokenizer.json; give the folder lmlab's runs were written to")
    return _unique(specs)


def _unique(specs: list[ModelSpec]) -> list[ModelSpec]:
    seen: dict[str, Path] = {}
    for s in specs:
        if s.name in seen:
            raise LmlabError(f"two models are named {s.name!r} ({seen[s.name]} and {s.path}); name them "
                             "with --ckpt NAME=RUN")
        seen[s.name] = s.path
    return specs


class ModelPool:
    """The served models by name; at most ``max_loaded`` in memory (least recently used unloaded).

    ``load(spec)`` returns a loaded model (anything with a ``stop()`` that frees it); :meth:`get`
    returns it, loading it first when needed. A model ``busy(model)`` says is answering requests is
    not unloaded: the least recently used idle one is, and with none idle the pool goes over
    ``max_loaded`` for a while rather than cut requests off (until the next load). A model got with
    ``hold=True`` is not unloaded either until :meth:`release`: a request holds its model from the
    load until its work reaches the engine, so another request's load cannot unload it in between.
    Loading happens under the pool's lock, one model at a time, so two requests for the same model
    load it once.
    """

    def __init__(self, specs: Sequence[ModelSpec], load: Callable[[ModelSpec], Any], max_loaded: int = 2,
                 busy: Callable[[Any], bool] = lambda _: False):
        if not specs:
            raise LmlabError("no model to serve; give --ckpt RUN (repeatable, NAME=RUN) or --runs DIR")
        if max_loaded < 1:
            raise LmlabError(f"--max-loaded {max_loaded} must be at least 1")
        self.specs = {s.name: s for s in specs}
        self._load = load
        self._busy = busy
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.errors: dict[str, str] = {}  # the last load error of each model that failed
        self.evicted: set[str] = set()  # the models unloaded to make room (until they are loaded again)
        self._holds: Counter[str] = Counter()
        self.unloads = 0

    @property
    def names(self) -> list[str]:
        """Every served model's name, in the order given."""
        return list(self.specs)

    def loaded(self) -> list[str]:
        """The names of the models in memory, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def in_memory(self) -> dict[str, Any]:
        """The models in memory by name, least recently used first (looking does not count as a use)."""
        with self._lock:
            return dict(self._loaded)

    def get(self, name: str, hold: bool = False) -> Any:
        """Return the loaded model ``name`` (loading it, and unloading the least recently used one if
        the pool is full), held in memory until :meth:`release` when ``hold``; raise KeyError for a
        name not served, and the load's own error (kept in :attr:`errors`) when it fails."""
        spec = self.specs[name]
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                if hold:
                    self._holds[name] += 1
                return self._loaded[name]
            while len(self._loaded) >= self.max_loaded:
                idle = [n for n, m in self._loaded.items() if not self._busy(m) and not self._holds[n]]
                if not idle:  # every model is answering someone: go over the limit rather than cut them off
                    break
                self._loaded.pop(idle[0]).stop()
                self.evicted.add(idle[0])
                self.unloads += 1
            try:
                model = self._load(spec)
            except Exception as e:
                self.errors[name] = str(e) or type(e).__name__
                raise
            self.errors.pop(name, None)
            self.evicted.discard(name)
            self._loaded[name] = model
            if hold:
                self._holds[name] += 1
            return model

    def release(self, name: str) -> None:
        """Let the model ``name``, got with ``hold=True``, be unloaded again (once every hold on it
        is released)."""
        with self._lock:
            self._holds[name] -= 1
            if self._holds[name] <= 0:
                del self._holds[name]

    def stop(self) -> None:
        """Unload every model."""
        with self._lock:
            while self._loaded:
                self._loaded.popitem(last=False)[1].stop()


class Holds:
    """The models one request holds in a :class:`ModelPool` (:meth:`get`), all let go by
    :meth:`release`; a model got after the release (a load that outlived its request) is let go at
    once."""

    def __init__(self, pool: ModelPool):
        self.pool = pool
        self.names: list[str] = []
        self.released = False
        self._lock = threading.Lock()

    def get(self, name: str) -> Any:
        """Return the model ``name`` from the pool, held until :meth:`release` (the pool's errors as
        :meth:`ModelPool.get`)."""
        model = self.pool.get(name, hold=True)
        with self._lock:
            if not self.released:
                self.names.append(name)
                return model
        self.pool.release(name)
        return model

    def release(self) -> None:
        """Let go of every model held; returns nothing."""
        with self._lock:
            self.released = True
            names, self.names = self.names, []
        for name in names:
            self.pool.release(name)
