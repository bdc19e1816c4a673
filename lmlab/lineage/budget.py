"""The lineage's budgets and presets: how much training each neural model gets.

A budget is one of three kinds, given by exactly one flag:

* ``--budget-tokens N``: every neural model trains on the same N tokens;
* ``--budget-flops F``: every neural model spends the same F training FLOPs (forward +
  backward), so each gets ``F / flops_per_token`` tokens by its own count
  (``model.flops_per_token(block)``: PaLM's count for decoders, as ``lmlab scaling flops``;
  6 x the matmul parameters for the NPLM and recurrent LMs);
* ``--budget SECONDS``: every model trains for the same wall-clock time (the schedule
  runs on elapsed time, so the result depends on the machine).

A work budget (tokens or FLOPs) becomes a fixed number of optimizer steps per model, so
the learning-rate schedule, the data seen and the evaluation points are the same on every
machine. Presets (:data:`PRESETS`) are named settings, applied to options left at their
defaults.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from lmlab.errors import LmlabError

Kind = Literal["tokens", "flops", "seconds"]

# name -> (what it is for, option values); how the times were estimated is in the README (the lineage).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "demo": ("`make demo`, about 10 minutes on 2 AVX2 cores",
             {"size": "mini", "budget_flops": 6e12, "precision": "fp32", "eval_stride": 128,
              "eval_iters": 4}),
    "full": ("about an hour on 2 AVX2 cores", {"size": "mini", "budget_flops": 4.5e13, "precision": "fp32"}),
}
BUDGET_FIELDS = ("budget_tokens", "budget_flops", "budget")


@dataclass(frozen=True)
class Budget:
    """The budget every model of one lineage run gets: ``kind`` and its ``value``."""

    kind: Kind
    value: float

    @property
    def work(self) -> bool:
        """True for a budget of work (tokens or FLOPs), which fixes each model's steps."""
        return self.kind != "seconds"

    def describe(self) -> str:
        """The budget in words, e.g. ``1.5e+13 training FLOPs``."""
        if self.kind == "tokens":
            return f"{self.value:,.0f} training tokens"
        if self.kind == "flops":
            return f"{self.value:.3g} training FLOPs"
        return f"{self.value:g} s of training"

    def steps(self, name: str, flops_per_token: float, tokens_per_step: int) -> int:
        """Optimizer steps of ``tokens_per_step`` tokens that spend this work budget on model ``name``."""
        tokens = self.value if self.kind == "tokens" else self.value / flops_per_token
        steps = round(tokens / tokens_per_step)
        if steps < 1:
            need = tokens_per_step * (flops_per_token if self.kind == "flops" else 1)
            flag = "--budget-flops" if self.kind == "flops" else "--budget-tokens"
            raise LmlabError(f"{name}: {flag} {self.value:g} is too small to take one step of "
                             f"{tokens_per_step} tokens; raise it to at least {need:.3g}")
        return steps


def describe_presets() -> str:
    """The presets in one line: name, purpose and values of each."""
    def value(x: Any) -> str:
        return f"{x:g}" if isinstance(x, float) else str(x)

    return "; ".join(f"{name}: {use} ({', '.join(f'{k}={value(v)}' for k, v in values.items())})"
                     for name, (use, values) in PRESETS.items())


def apply_preset(cfg: Any) -> Any:
    """Return ``cfg`` with its ``preset``'s values put into the options still at their defaults.

    The preset's budget applies only when no budget flag was given.
    """
    if cfg.preset is None:
        return cfg
    if cfg.preset not in PRESETS:
        raise LmlabError(f"unknown lineage preset {cfg.preset!r}; choose from {', '.join(PRESETS)}")
    defaults = type(cfg)()
    budget_given = any(getattr(cfg, f) is not None for f in BUDGET_FIELDS)
    changes = {}
    for name, value in PRESETS[cfg.preset][1].items():
        if name in BUDGET_FIELDS and budget_given:
            continue
        if getattr(cfg, name) == getattr(defaults, name):
            changes[name] = value
    return dataclasses.replace(cfg, **changes)


def budget_of(cfg: Any) -> Budget:
    """Return the one :class:`Budget` that ``cfg`` gives; raise LmlabError unless exactly one is given."""
    given = [(f, getattr(cfg, f)) for f in BUDGET_FIELDS if getattr(cfg, f) is not None]
    flags = {"budget_tokens": "--budget-tokens", "budget_flops": "--budget-flops", "budget": "--budget"}
    if len(given) != 1:
        named = ", ".join(flags[f] for f, _ in given)
        raise LmlabError(f"give exactly one budget (got {named or 'none'}): --budget-tokens N, "
                         "--budget-flops F, --budget SECONDS or a --preset (demo, full)")
    field, value = given[0]
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise LmlabError(f"{flags[field]} must be a positive number (got {value}); e.g. --budget-tokens 2e6")
    kind: Kind = {"budget_tokens": "tokens", "budget_flops": "flops", "budget": "seconds"}[field]  # type: ignore[assignment]
    return Budget(kind, float(value))
