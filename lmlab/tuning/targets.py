"""The linear layers LoRA can target, by name: every ``nn.Linear`` (the project's
:class:`~lmlab.nn.linear.Linear` included) and the named slices of fused layers.

Fused layers hold several projections in one matrix, row blocks of its output: self-attention's
``qkv`` (``q``, ``k``, ``v``), cross-attention's ``kv`` (``k``, ``v``) and SwiGLU's ``w13``
(``w1`` gate, ``w3`` up). Each slice gets the name it would have as a layer of its own
(``blocks.0.attn.q``), so Hugging Face's ``q_proj``/``k_proj``/``v_proj``/``gate_proj``/
``up_proj`` each map to exactly one target and PEFT adapters convert both ways.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from lmlab.errors import LmlabError
from lmlab.tuning.module import TuningModule

WHOLE = "all"  # the slice name of a target that is a whole layer


@dataclass(frozen=True)
class Target:
    """A LoRA target: output rows ``[start, stop)`` of ``linear`` (all rows for a whole layer),
    known as ``name``; ``layer`` is the linear layer's own module name, ``part`` the slice name
    (``q``, ``k``, ``v``, ``w1``, ``w3``, or ``all``)."""

    name: str
    layer: str
    part: str
    linear: nn.Linear
    start: int
    stop: int


def _slices(parent: nn.Module, child: str, linear: nn.Linear) -> list[tuple[str, int, int]]:
    """Return the named row blocks of a fused layer ``parent.child`` (empty for a plain layer)."""
    heads = tuple(getattr(parent, a, None) for a in ("n_head", "n_kv_heads", "head_dim"))
    if child == "qkv" and None not in heads:
        nh, nkv, hd = heads
        if linear.out_features == (nh + 2 * nkv) * hd:
            q, k = nh * hd, (nh + nkv) * hd
            return [("q", 0, q), ("k", q, k), ("v", k, (nh + 2 * nkv) * hd)]
    if child == "kv" and None not in heads and getattr(parent, "cross", False):
        _, nkv, hd = heads
        return [("k", 0, nkv * hd), ("v", nkv * hd, 2 * nkv * hd)]
    hidden = getattr(parent, "hidden", None)
    if child == "w13" and hidden is not None and linear.out_features == 2 * hidden:
        return [("w1", 0, hidden), ("w3", hidden, 2 * hidden)]
    return []


def linear_targets(model: nn.Module) -> dict[str, Target]:
    """Return every LoRA target of ``model`` by name: its linear layers and their slices (layers
    inside tuning modules left out). A slice's name never shadows a real module's."""
    modules = dict(model.named_modules())
    inside_tuning = [n for n, m in modules.items() if isinstance(m, TuningModule)]
    out: dict[str, Target] = {}
    for name, m in modules.items():
        if not isinstance(m, nn.Linear) or any(name.startswith(t + ".") for t in inside_tuning):
            continue
        out[name] = Target(name, name, WHOLE, m, 0, m.out_features)
        parent_name, _, child = name.rpartition(".")
        parent = modules.get(parent_name)
        if parent is None:
            continue
        for part, a, b in _slices(parent, child, m):
            full = f"{parent_name}.{part}" if parent_name else part
            if full not in modules:
                out[full] = Target(full, name, part, m, a, b)
    return out


def matches(pattern: str, name: str) -> bool:
    """True when ``name`` equals ``pattern``, ends with ``.pattern``, or fully matches it as a
    regular expression (PEFT's ``target_modules`` rules)."""
    if name == pattern or name.endswith("." + pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def _generic(name: str) -> str:
    return re.sub(r"\.\d+(?=\.|$)", ".N", name)


def select_targets(model: nn.Module, patterns: list[str]) -> list[Target]:
    """Return the targets of ``model`` matched by ``patterns``. Raises LmlabError when a pattern
    matches nothing (listing the names that exist) or when a layer is targeted both whole and by
    a slice."""
    available = linear_targets(model)
    chosen: dict[str, Target] = {}
    for p in patterns:
        hits = [t for n, t in available.items() if matches(p, n)]
        if not hits:
            names = sorted({_generic(n) for n in available})
            raise LmlabError(f"LoRA target {p!r} matches no linear layer of this model; the names that exist "
                             f"are: {', '.join(names)} (a pattern matches a name, its last parts, or as a "
                             "regular expression)")
        chosen.update((t.name, t) for t in hits)
    by_layer: dict[str, set[str]] = {}
    for t in chosen.values():
        by_layer.setdefault(t.layer, set()).add(t.part)
    for layer, parts in by_layer.items():
        if WHOLE in parts and len(parts) > 1:
            raise LmlabError(f"the LoRA targets select {layer} both whole and by its slices "
                             f"({', '.join(sorted(parts - {WHOLE}))}); target one or the other")
    return sorted(chosen.values(), key=lambda t: (t.layer, t.start))
