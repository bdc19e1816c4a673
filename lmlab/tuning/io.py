"""An adapter run on disk: ``tuning.json`` (method, options, kept-trainable prefixes, the base's
fingerprint and where the base is) and ``tuning.safetensors`` (the method's parameters and the
kept-trainable ones only). ``lmlab.load(folder)`` opens it as base + adapter."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.fileio import atomic_path, write_json
from lmlab.tuning.api import apply_tuning, tuning_info, tuning_state_dict, unload_tuning
from lmlab.tuning.module import backbone, require_state, tuning_state
from lmlab.tuning.options import TuningInfo, TuningOptions
from lmlab.tuning.prefix import fold_prefix

META = "tuning.json"
WEIGHTS = "tuning.safetensors"
FORMAT = "lmlab-tuning"


def is_tuning_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder holding an adapter written by :func:`save_tuning`."""
    return (Path(path) / META).is_file()


def save_tuning(model: nn.Module, folder: str | os.PathLike, base: str | os.PathLike | None = None) -> Path:
    """Write the tuning of ``model`` to ``folder``: :data:`META` and :data:`WEIGHTS` (the method's
    and the kept-trainable parameters, nothing of the frozen base). ``base``: the run (or Hugging
    Face folder) the model was loaded from, so ``lmlab.load(folder)`` can rebuild base + adapter;
    stored relative to ``folder`` when it can be. Returns the folder."""
    from safetensors.torch import save_file

    state = require_state(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tuning_state_dict(model).items()}
    base_ref = None
    if base is not None:
        b = Path(base).resolve()
        try:
            base_ref = os.path.relpath(b, folder.resolve())
        except ValueError:  # another drive (Windows)
            base_ref = str(b)
    meta: dict[str, Any] = {
        "format": FORMAT, "version": 1, "method": state.options.method, "options": state.options.to_dict(),
        "keep_trainable": list(state.keep_trainable), "fingerprint": state.fingerprint,
        "folded": state.folded, "base": base_ref, "info": tuning_info(model).to_dict(),
        "tensors": {k: list(v.shape) for k, v in tensors.items()}}
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", FORMAT: "1"})
    write_json(folder / META, meta)
    return folder


def read_tuning_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """Return the parsed :data:`META` of an adapter folder; raise LmlabError when it is missing or damaged."""
    p = Path(folder) / META
    if not p.is_file():
        raise LmlabError(f"no {META} in {folder}; give a folder written by save_tuning (an adapter run)")
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmlabError(f"{p} is damaged ({e}); save the adapter again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "options" not in meta:
        raise LmlabError(f"{p} is not an lmlab adapter description (format {FORMAT!r}); "
                         "save the adapter again")
    return meta


def base_path(folder: str | os.PathLike) -> Path:
    """Return the base model path an adapter folder refers to; raise LmlabError when it names none
    or the base is gone."""
    meta = read_tuning_meta(folder)
    ref = meta.get("base")
    if not ref:
        raise LmlabError(f"the adapter in {folder} does not say which base it belongs to; load the base "
                         "yourself and call lmlab.tuning.load_tuning(model, folder)")
    p = Path(ref) if Path(ref).is_absolute() else Path(folder) / ref
    if not p.exists():
        raise LmlabError(f"the adapter in {folder} belongs to the base {ref}, which does not exist; put the "
                         "base back, or load it yourself and call lmlab.tuning.load_tuning(model, folder)")
    return p


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    f = folder / WEIGHTS
    if not f.is_file():
        raise LmlabError(f"no {WEIGHTS} in {folder}; the adapter is incomplete: save it again")
    try:
        return load_file(str(f))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise LmlabError(f"{f} is damaged ({e}); save the adapter again") from None


def _check_fit(model: nn.Module, saved: dict[str, torch.Tensor], folder: Path) -> None:
    """Raise LmlabError naming the first parameter whose name or shape differs from the model's."""
    expected = tuning_state_dict(model)
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    wrong = [k for k in sorted(set(expected) & set(saved))
             if tuple(expected[k].shape) != tuple(saved[k].shape)]
    if wrong:
        k = wrong[0]
        raise LmlabError(f"the adapter in {folder} does not fit this base: {k} has shape "
                         f"{tuple(saved[k].shape)} there and {tuple(expected[k].shape)} here; it was trained "
                         "on a base of another shape")
    if missing or extra:
        names = ", ".join((missing or extra)[:3])
        raise LmlabError(f"the adapter in {folder} does not fit this base: "
                         f"{'missing' if missing else 'unexpected'} {names}; it was trained on another "
                         "architecture")


def load_tuning(model: nn.Module, folder: str | os.PathLike) -> TuningInfo:
    """Apply the adapter saved in ``folder`` to ``model`` (its base, untuned; or a model tuned with the
    same options) and load its weights. A base of another shape or with other weights than the one
    the adapter was trained on raises LmlabError saying which (shape or fingerprint). Returns the
    :class:`TuningInfo`."""
    folder = Path(folder)
    meta = read_tuning_meta(folder)
    opts = TuningOptions.from_dict(meta["options"])
    keep = tuple(meta.get("keep_trainable") or ())
    applied = tuning_state(model) is None
    if applied:
        apply_tuning(model, opts, keep)
    elif require_state(model).options.to_dict() != opts.to_dict():
        raise LmlabError(f"this model is tuned with other options than the adapter in {folder}; load it onto "
                         "the untuned base")
    try:
        state = require_state(model)
        if meta.get("folded") and not state.folded:
            fold_prefix(backbone(model))
            state.folded = True
        saved = _read_weights(folder)
        _check_fit(model, saved, folder)
        if meta.get("fingerprint") != state.fingerprint:
            where = meta.get("base") or "see its tuning.json"
            raise LmlabError(f"the adapter in {folder} was trained on another base: the base fingerprint "
                             f"differs (adapter {meta.get('fingerprint')}, this model {state.fingerprint}); "
                             f"load it onto the base it was trained on ({where})")
        with torch.no_grad():
            model.load_state_dict(saved, strict=False)
    except LmlabError:
        if applied:
            unload_tuning(model, merge=False)
        raise
    return tuning_info(model)
