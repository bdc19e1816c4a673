"""Apply, merge, disable and remove a tuning method (the functions :mod:`lmlab.tuning` exports)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.tuning.adapters import apply_adapters
from lmlab.tuning.fingerprint import base_fingerprint
from lmlab.tuning.lora import apply_lora, lora_layers, merge_lora, unmerge_lora
from lmlab.tuning.module import (
    STATE_ATTR,
    TuningModule,
    TuningState,
    backbone,
    require_state,
    tuning_modules,
    tuning_state,
)
from lmlab.tuning.options import TuningInfo, TuningOptions
from lmlab.tuning.prefix import ENCODER_ATTR, apply_prefix, fold_prefix
from lmlab.tuning.prompt import apply_prompt


def _unique_params(model: nn.Module) -> dict[int, nn.Parameter]:
    return {id(p): p for p in model.parameters()}


def _method_param_ids(model: nn.Module) -> set[int]:
    return {id(p) for _, m in tuning_modules(model) for p in m.parameters()}


def tuning_info(model: nn.Module) -> TuningInfo:
    """Return the method, the tuning module names and the trainable / total parameter counts of a
    tuned ``model`` (tied weights counted once)."""
    state = require_state(model)
    params = _unique_params(model).values()
    return TuningInfo(state.options.method, sum(p.numel() for p in params if p.requires_grad),
                      sum(p.numel() for p in params), [n for n, _ in tuning_modules(model)])


def apply_tuning(model: nn.Module, opts: TuningOptions, keep_trainable: Sequence[str] = ()) -> TuningInfo:
    """Apply the method of ``opts`` to ``model`` (in place) and freeze every parameter except the
    method's and those whose names start with one of ``keep_trainable`` (e.g. ``("head.",)`` for a
    classifier's head). LoRA targets any linear layer of ``model``; adapters, prefixes and prompts
    go into its language model (``model.backbone`` when it has one). Returns the
    :class:`TuningInfo` (trainable and total parameters, and the share)."""
    if tuning_state(model) is not None:
        raise LmlabError(f"this model already has {tuning_state(model).options.method} tuning; apply one "
                         "method per model (start again from the base)")
    keep = tuple(keep_trainable)
    fingerprint = base_fingerprint(model, keep)
    lm = backbone(model)
    handles: list = []
    if opts.method == "lora":
        _, handles = apply_lora(model, opts)
    elif opts.method in ("houlsby", "pfeiffer"):
        _, handles = apply_adapters(lm, opts)
    elif opts.method == "prefix":
        apply_prefix(lm, opts)
    elif opts.method == "prompt":
        _, handles = apply_prompt(lm, opts)
    train = _method_param_ids(model) | {id(p) for name, p in model.named_parameters(remove_duplicate=False)
                                        if keep and name.startswith(keep)}
    for p in model.parameters():
        p.requires_grad_(id(p) in train)
    for _, m in tuning_modules(model):
        m.train(model.training)
    setattr(model, STATE_ATTR, TuningState(opts, keep, fingerprint, handles=handles))
    return tuning_info(model)


def tuning_parameter_names(model: nn.Module) -> list[str]:
    """Return the state-dict names that belong to the method or are kept trainable."""
    state = require_state(model)
    prefixes = tuple(n + "." for n, _ in tuning_modules(model))
    keep = state.keep_trainable
    return [k for k in model.state_dict() if k.startswith(prefixes) or (keep and k.startswith(keep))]


def tuning_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return the method's parameters and the kept-trainable ones of ``model``, by state-dict name
    (the base's frozen weights left out)."""
    names = set(tuning_parameter_names(model))
    return {k: v for k, v in model.state_dict().items() if k in names}


def merge_tuning(model: nn.Module) -> int:
    """Fold the method into plain weights; return how many layers changed (0: nothing left to do).

    LoRA: add each update into its layer's weight (idempotent, as PEFT: merging again changes
    nothing); prefix tuning: replace the MLP by the prefixes it gives (irreversible). Adapters and
    prompts are not linear in the weights, so they raise LmlabError."""
    state = require_state(model)
    method = state.options.method
    if method == "lora":
        count = merge_lora(model)
        state.merged = True
        return count
    if method == "prefix":
        count = fold_prefix(backbone(model))
        state.folded = True
        return count
    raise LmlabError(f"{method} tuning adds a non-linear module (adapters) or input tokens (prompt) that no "
                     "weight of the base can absorb; it cannot be merged: keep it as it is")


def unmerge_tuning(model: nn.Module) -> int:
    """Undo :func:`merge_tuning` for LoRA (subtract the updates); return how many layers changed.
    Folded prefixes have no MLP to return to, so that raises LmlabError."""
    state = require_state(model)
    if state.options.method == "lora":
        count = unmerge_lora(model)
        state.merged = False
        return count
    if state.options.method == "prefix" and state.folded:
        raise LmlabError("the prefixes were folded (the MLP that made them is gone); they cannot be "
                         "unmerged, and need not be: train the plain prefixes directly")
    return 0


@contextlib.contextmanager
def disabled_tuning(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` as its base inside the block: every tuning module adds nothing. A merged LoRA
    cannot be switched off (its update is in the weights): unmerge it first."""
    state = require_state(model)
    if state.merged and any(lin.lora.merged for _, lin in lora_layers(model)):
        raise LmlabError("the LoRA is merged into the weights, so it cannot be disabled; call "
                         "unmerge_tuning(model) first")
    modules = _nested(model)
    before = [m.enabled for m in modules]
    for m in modules:
        m.enabled = False
    try:
        yield model
    finally:
        for m, e in zip(modules, before, strict=True):
            m.enabled = e


def _nested(model: nn.Module) -> list[TuningModule]:
    """Every tuning module of ``model``, nested ones included."""
    return [m for m in model.modules() if isinstance(m, TuningModule)]


def unload_tuning(model: nn.Module, merge: bool = True) -> nn.Module:
    """Take the method off ``model`` and return it as a plain model of its family: with ``merge``
    (LoRA only) the updates stay in the weights; without, the base comes back unchanged. Every
    parameter is trainable again."""
    state = require_state(model)
    method = state.options.method
    if merge and method != "lora":
        raise LmlabError(f"{method} tuning cannot be merged into the base weights; unload it with "
                         "merge=False (which drops it) or keep the tuned model")
    if method == "lora":
        merge_lora(model) if merge else unmerge_lora(model)
    for h in state.handles:
        h.remove()
    for m in list(model.modules()):
        for child in ("lora", "adapter", "prefix", "prompt", ENCODER_ATTR):
            sub = getattr(m, child, None)
            if isinstance(sub, TuningModule):
                setattr(m, child, None) if child == "prefix" else delattr(m, child)
    for p in model.parameters():
        p.requires_grad_(True)
    delattr(model, STATE_ATTR)
    return model
