"""What every tuning method shares: the :class:`TuningModule` base of the modules a method adds
to a model, and the record (:class:`TuningState`) a tuned model carries.

A method never replaces or forks a model's modules: it attaches a :class:`TuningModule` as a
child of the module it adapts (``blocks.0.attn.qkv.lora``, ``blocks.0.mlp.adapter``,
``blocks.0.attn.prefix``, ``tok_emb.prompt``) and, where needed, a forward hook on that module.
So the base's parameter names, and its files, stay as they were.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lmlab.errors import LmlabError
from lmlab.tuning.options import TuningOptions

STATE_ATTR = "lmlab_tuning"


class TuningModule(nn.Module):
    """Base of the modules a tuning method adds; ``enabled=False`` makes it a no-op
    (:func:`lmlab.tuning.disabled_tuning`)."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True


@dataclass
class TuningState:
    """The record on a tuned model (attribute ``lmlab_tuning``): the options, the kept-trainable
    prefixes, the fingerprint of the base taken before tuning, whether the method's weights are
    merged or folded into plain tensors, and the hooks to remove on unload."""

    options: TuningOptions
    keep_trainable: tuple[str, ...]
    fingerprint: str
    merged: bool = False
    folded: bool = False
    handles: list[Any] = field(default_factory=list)


def tuning_state(model: nn.Module) -> TuningState | None:
    """Return the tuning record of ``model``, None when it was not tuned."""
    return getattr(model, STATE_ATTR, None)


def require_state(model: nn.Module) -> TuningState:
    """Return the tuning record of ``model``; raise LmlabError when it has none."""
    state = tuning_state(model)
    if state is None:
        raise LmlabError("this model has no tuning method applied; call lmlab.tuning.apply_tuning first "
                         "(or load an adapter run with lmlab.load)")
    return state


def tuning_modules(model: nn.Module) -> list[tuple[str, TuningModule]]:
    """Return ``(name, module)`` of every tuning module in ``model`` (outermost ones only)."""
    found: list[tuple[str, TuningModule]] = []
    for name, m in model.named_modules():
        if isinstance(m, TuningModule) and not any(name.startswith(n + ".") for n, _ in found):
            found.append((name, m))
    return found


def backbone(model: nn.Module) -> nn.Module:
    """Return the language model inside ``model``: its ``backbone`` (a task model such as a
    sequence classifier) or the model itself."""
    inner = getattr(model, "backbone", None)
    return inner if isinstance(inner, nn.Module) else model
