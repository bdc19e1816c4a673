"""The model file: self-describing safetensors.

``model.safetensors`` holds the weights plus, in its metadata, ``lmlab_arch`` (the family:
decoder, nplm, rnn, elmo) and ``lmlab_config`` (the model config as JSON), so the file
alone rebuilds the model (see :mod:`lmlab.models.registry`). A tied output head is stored
once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.fileio import atomic_path
from lmlab.models.decoder import Decoder, DecoderConfig
from lmlab.nn.linear import use_row_major_layout

ARCH = "decoder"
WEIGHTS = "model.safetensors"


def model_file(path: str | os.PathLike) -> Path:
    """Return the weights file for ``path``: the path itself, or ``path/model.safetensors`` for a folder."""
    p = Path(path)
    return p / WEIGHTS if p.is_dir() else p


def save_decoder(model: Decoder, path: str | os.PathLike) -> Path:
    """Atomically write the decoder ``model`` to ``path`` (a ``.safetensors`` file, or a folder that gets
    ``model.safetensors``); return the file written."""
    from safetensors.torch import save_file

    p = Path(path)
    if p.is_dir() or p.suffix != ".safetensors":
        p = p / WEIGHTS
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    metadata = {"format": "pt", "lmlab_arch": ARCH, "lmlab_config": json.dumps(model.config.to_dict())}
    with atomic_path(p) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return p


def read_arch(path: str | os.PathLike) -> tuple[str | None, dict[str, Any] | None]:
    """Return ``(lmlab_arch, config dict)`` from a model file's metadata (weights not read);
    ``(arch or None, None)`` when there is no lmlab config. A damaged header raises LmlabError."""
    from safetensors import safe_open

    f = _check_exists(path)
    try:
        with safe_open(str(f), framework="pt") as sf:
            meta = sf.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise LmlabError(f"{f} is damaged or not a safetensors file ({e}); "
                         "re-save or re-train the model") from None
    if "lmlab_config" not in meta:
        return meta.get("lmlab_arch"), None
    try:
        return meta.get("lmlab_arch"), json.loads(meta["lmlab_config"])
    except json.JSONDecodeError:
        raise LmlabError(f"{f} has a damaged lmlab_config; re-save the model") from None


def read_config(path: str | os.PathLike) -> DecoderConfig:
    """Return the :class:`DecoderConfig` stored in a model file's metadata (weights not read)."""
    arch, values = read_arch(path)
    if arch != ARCH or values is None:
        raise LmlabError(f"{_check_exists(path)} is not an lmlab decoder (no lmlab_config metadata); for a "
                         "Hugging Face checkpoint run 'lmlab import hf --src DIR --out RUN' first")
    return DecoderConfig.from_dict(values)


def _check_exists(path: str | os.PathLike) -> Path:
    f = model_file(path)
    if not f.is_file():
        raise LmlabError(f"no model at {f}; give a run directory holding {WEIGHTS} or the file itself")
    return f


def load_decoder(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> Decoder:
    """Rebuild a :class:`Decoder` from a file written by :func:`save_model` (or its folder).

    Returns the model in eval mode on ``map_location`` (cast to ``dtype`` if given). A
    missing or damaged file, or weights that do not fit the stored config, raise LmlabError.
    """
    from safetensors.torch import load_file

    f = _check_exists(path)
    cfg = read_config(f)
    try:
        state = load_file(str(f), device=str(map_location))
    except Exception as e:
        raise LmlabError(f"{f} is damaged ({e}); re-save or re-train the model") from None
    with torch.device("meta"):
        model = Decoder(cfg)
    load_state(model, state, f)
    model.to(device=map_location)
    if dtype is not None:
        model.to(dtype=dtype)
    return model.eval()


def load_state(model: Decoder, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Load ``state`` into ``model``, checking names and shapes, and re-tie the head.

    A model built on the meta device adopts the tensors and gets its non-persistent
    buffers (RoPE/sinusoidal tables) rebuilt; a normal model copies them in place. Raises
    LmlabError naming ``source`` when names or shapes differ.
    """
    expected = model.state_dict()
    if model.config.tie_embeddings:
        expected.pop("lm_head.weight", None)
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or extra or wrong:
        parts = [f"missing {', '.join(missing[:3])}" if missing else "",
                 f"unexpected {', '.join(extra[:3])}" if extra else "",
                 "wrong shape " + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                                            for k in wrong[:3]) if wrong else ""]
        problems = "; ".join(p for p in parts if p)
        raise LmlabError(f"weights in {source} do not match the model config ({problems}); "
                         "the file is from another model or damaged: re-save it")
    on_meta = model.tok_emb.weight.is_meta
    # A model built on the meta device takes the tensors as they are (no copy, their dtype);
    # a materialised one copies them into its parameters (keeping its device and dtype).
    model.load_state_dict(state, strict=False, assign=on_meta)
    if model.config.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    if on_meta:
        _rebuild_buffers(model, next(iter(state.values())).device)


def _rebuild_buffers(model: Decoder, device: torch.device) -> None:
    """Recompute non-persistent buffers (RoPE / sinusoidal tables) on ``device``: they are
    not in the file, and after building on the meta device they hold no data."""
    from lmlab.nn.positions import RotaryEmbedding, SinusoidalPositions

    cfg = model.config
    with torch.device(device):
        if isinstance(model.rope, RotaryEmbedding):
            # the table width the model was built with: head_dim, or d_h^R for MLA
            model.rope = RotaryEmbedding(model.rope.cos.shape[-1], cfg.block_size, cfg.rope_theta,
                                         cfg.rope_scaling)
        if isinstance(model.pos_emb, SinusoidalPositions):
            model.pos_emb = SinusoidalPositions(cfg.block_size, cfg.d_model)


def save_module(model: nn.Module, path: str | os.PathLike, arch: str, config: dict[str, Any]) -> Path:
    """Atomically write any ``model`` to ``path`` (a ``.safetensors`` file, or a folder that gets
    ``model.safetensors``) with ``arch`` and ``config`` in the metadata; return the file written."""
    from safetensors.torch import save_model

    p = Path(path)
    if p.is_dir() or p.suffix != ".safetensors":
        p = p / WEIGHTS
    metadata = {"format": "pt", "lmlab_arch": arch, "lmlab_config": json.dumps(config)}
    use_row_major_layout(model)  # safetensors writes contiguous tensors only (generation may have moved them)
    with atomic_path(p) as tmp:
        save_model(model, str(tmp), metadata=metadata)  # stores a tied matrix once
    return p


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a safetensors file into ``model`` (names and shapes must match); raise LmlabError if not."""
    from safetensors.torch import load_model

    f = _check_exists(path)
    try:
        missing, unexpected = load_model(model, str(f), strict=False, device="cpu")
    except RuntimeError as e:  # shape mismatch
        raise LmlabError(f"weights in {f} do not fit the model ({str(e).splitlines()[0]}); "
                         "the file is from another model or damaged: re-save it") from None
    except Exception as e:  # a damaged file
        raise LmlabError(f"{f} is damaged ({e}); re-save or re-train the model") from None
    if missing or unexpected:
        raise LmlabError(f"weights in {f} do not match the model config (missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}); the file is from another model: re-save it")
