"""Several models behind one server: names from --ckpt and --runs, loading on demand, the least
recently used model unloaded beyond --max-loaded, a failing model not stopping the others."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from lmlab.errors import LmlabError
from lmlab.serve.pool import Holds, ModelPool, ModelSpec, discover_runs, parse_models


def _run(folder: Path, hf: bool = False) -> Path:
    folder.mkdir(parents=True)
    (folder / ("config.json" if hf else "model.safetensors")).write_bytes(b"x")
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_ckpt_items_name_models(tmp_path):
    a, b = _run(tmp_path / "gpt"), _run(tmp_path / "llama")
    specs = parse_models([f"small={a}", str(b), str(a / "model.safetensors")])
    assert specs == [ModelSpec("small", a), ModelSpec("llama", b), ModelSpec("gpt", a / "model.safetensors")]
    with pytest.raises(LmlabError, match="two models are named 'llama'"):
        parse_models([str(b), f"llama={a}"])
    with pytest.raises(LmlabError, match="does not exist"):
        parse_models([f"x={tmp_path / 'nope'}"])
    assert parse_models([f"<img src=x onerror=alert(1)>={a}"])[0].name == "<img src=x onerror=alert(1)>"
    with pytest.raises(LmlabError, match="printable characters"):
        parse_models([f" x={a}"])


def test_runs_folder_finds_every_model_at_any_depth(tmp_path):
    _run(tmp_path / "lineage" / "gpt2")
    _run(tmp_path / "lineage" / "llama")
    _run(tmp_path / "hf-import", hf=True)
    (tmp_path / "lineage" / "data").mkdir()
    (tmp_path / "lineage" / "data" / "tokenizer.json").write_text("{}")  # prepared data: no model
    names = [s.name for s in discover_runs(tmp_path)]
    assert names == ["hf-import", "lineage.gpt2", "lineage.llama"]
    with pytest.raises(LmlabError, match="no run under"):
        discover_runs(tmp_path / "lineage" / "data")
    with pytest.raises(LmlabError, match="is not a folder"):
        discover_runs(tmp_path / "missing")


class Fake:
    def __init__(self, name: str, log: list):
        self.name, self.log = name, log
        log.append(("load", name))

    def stop(self) -> None:
        self.log.append(("stop", self.name))


def test_least_recently_used_model_is_unloaded_and_reloaded_on_demand():
    log: list = []
    specs = [ModelSpec(n, Path(n)) for n in ("a", "b", "c")]
    pool = ModelPool(specs, lambda s: Fake(s.name, log), max_loaded=2)
    assert pool.names == ["a", "b", "c"] and pool.loaded() == []
    pool.get("a"), pool.get("b"), pool.get("a"), pool.get("c")
    assert pool.loaded() == ["a", "c"] and ("stop", "b") in log and pool.unloads == 1
    assert pool.evicted == {"b"}  # unloaded to make room: the page says so while it reloads
    pool.get("b")
    assert pool.loaded() == ["c", "b"] and log.count(("load", "b")) == 2 and pool.evicted == {"a"}
    with pytest.raises(KeyError):
        pool.get("zzz")
    pool.stop()
    assert pool.loaded() == [] and log[-2:] == [("stop", "c"), ("stop", "b")]


def test_a_held_model_is_not_unloaded_until_released():
    """A request holds its model from the load until its work is in the engine: another request's
    load in between must not unload it (the pool goes over max_loaded instead)."""
    log: list = []
    specs = [ModelSpec(n, Path(n)) for n in ("a", "b", "c")]
    pool = ModelPool(specs, lambda s: Fake(s.name, log), max_loaded=1)
    holds = Holds(pool)
    holds.get("a")
    pool.get("b")  # "a" is held: kept, over the limit
    assert pool.loaded() == ["a", "b"] and pool.evicted == set()
    holds.release()
    pool.get("c")  # "a" and "b" are idle now: unloaded, least recently used first
    assert pool.loaded() == ["c"] and pool.evicted == {"a", "b"}
    late = Holds(pool)
    late.release()
    late.get("a")  # a load that outlived its request: let go at once
    pool.get("b")
    assert pool.loaded() == ["b"] and late.names == []


def test_a_model_that_fails_to_load_reports_and_the_others_go_on():
    tries = {"bad": 0}

    def load(spec):
        if spec.name == "bad":
            tries["bad"] += 1
            if tries["bad"] == 1:
                raise LmlabError("bad/model.safetensors is damaged")
        return Fake(spec.name, [])

    pool = ModelPool([ModelSpec("good", Path("g")), ModelSpec("bad", Path("b"))], load, max_loaded=2)
    with pytest.raises(LmlabError, match="damaged"):
        pool.get("bad")
    assert pool.errors == {"bad": "bad/model.safetensors is damaged"}
    assert pool.get("good").name == "good"
    assert pool.get("bad").name == "bad" and pool.errors == {}  # tried again on the next request


def test_concurrent_requests_load_a_model_once():
    loads = []

    def load(spec):
        loads.append(spec.name)
        time.sleep(0.05)
        return Fake(spec.name, [])

    pool = ModelPool([ModelSpec("a", Path("a"))], load, max_loaded=1)
    threads = [threading.Thread(target=pool.get, args=("a",)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == ["a"]


def test_bad_pool_settings_are_one_line():
    with pytest.raises(LmlabError, match="no model to serve"):
        ModelPool([], lambda s: None)
    with pytest.raises(LmlabError, match="--max-loaded 0"):
        ModelPool([ModelSpec("a", Path("a"))], lambda s: None, max_loaded=0)


def test_a_busy_model_is_not_unloaded():
    log: list = []
    busy = {"a"}
    specs = [ModelSpec(n, Path(n)) for n in ("a", "b", "c")]
    pool = ModelPool(specs, lambda s: Fake(s.name, log), max_loaded=2, busy=lambda m: m.name in busy)
    pool.get("a"), pool.get("b"), pool.get("c")
    assert pool.loaded() == ["a", "c"] and ("stop", "a") not in log  # b was the idle one
    busy.add("c")
    pool.get("b")  # a and c both answering: over the limit for a while
    assert pool.loaded() == ["a", "c", "b"]
    assert ("stop", "a") not in log and ("stop", "c") not in log
