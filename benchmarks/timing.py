"""Round-robin timing shared by the benchmarks: each mode called in turn item by item, so the noise of a
shared machine hits all alike; speeds from the median call, with the spread across rounds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def round_robin(fns: dict[str, Callable[[int], object]], n_items: int, rounds: int,
                device: torch.device) -> dict[str, list[list[float]]]:
    """Call each ``fns[name](i)`` for items ``i < n_items``, names interleaved per item, ``rounds``
    times; return the seconds of every call, per name, per round."""
    times: dict[str, list[list[float]]] = {m: [] for m in fns}
    for _ in range(rounds):
        for m in fns:
            times[m].append([])
        for i in range(n_items):
            for m, fn in fns.items():
                t = time.perf_counter()
                fn(i)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[m][-1].append(time.perf_counter() - t)
    return times


def summarise(times: dict[str, list[list[float]]], units: int) -> dict:
    """Return ``{"speed": units/s of each name from its median call over all rounds, "rounds": units/s
    from the median call of each round}``."""
    per_round = {m: [units / statistics.median(r) for r in t] for m, t in times.items()}
    speed = {m: units / statistics.median(sum(t, [])) for m, t in times.items()}
    return {"speed": speed, "rounds": per_round}


def ratio(s: dict, a: str, b: str) -> dict[str, float]:
    """Ratio of a's speed to b's: of the medians over all calls, and min-max of the per-round ratios."""
    rounds = [x / y for x, y in zip(s["rounds"][a], s["rounds"][b])]
    return {"median": round(s["speed"][a] / s["speed"][b], 2), "min": round(min(rounds), 2),
            "max": round(max(rounds), 2)}
