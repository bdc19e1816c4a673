"""The one loader: a run folder, a model file, a Hugging Face folder or an adapter run (base +
adapter, :mod:`lmlab.tuning`) -> model and tokenizer.

Every command that reads a model (generate, eval, embed, lineage, pretrain --init, and
the ones to come) goes through :func:`load_model_any`; ``lmlab.load(path)`` is
:func:`load`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lmlab.device import parse_dtype
from lmlab.errors import LmlabError


def is_hf_dir(path: str | os.PathLike) -> bool:
    """Return True when ``path`` is a Hugging Face model folder (config.json with a model_type)."""
    p = Path(path) / "config.json"
    if not p.is_file():
        return False
    try:
        return "model_type" in json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False


def load_model_any(path: str | os.PathLike, device: Any = "cpu", dtype: Any = None) -> Any:
    """Return the model in ``path`` (an lmlab run dir / model file of any architecture, a Hugging
    Face folder, or an adapter run: its base with the adapter applied) in eval mode on ``device``,
    cast to ``dtype`` (None or 'auto' keeps the stored dtype)."""
    from lmlab.models.io import WEIGHTS
    from lmlab.models.registry import load_model

    p = Path(path)
    if not p.exists():
        raise LmlabError(f"{p} does not exist; give a run directory, a model.safetensors or "
                         "a Hugging Face folder")
    dt = parse_dtype(dtype)
    if _is_adapter_run(p):
        from lmlab.tuning import base_path, load_tuning

        model = load_model_any(base_path(p), "cpu", dt)
        load_tuning(model, p)
        return model.to(device).eval()
    if p.is_dir() and is_hf_dir(p) and not _is_lmlab_file(p / WEIGHTS):
        from lmlab.interop.hf_auto import load_hf_model

        model, _ = load_hf_model(p, dt)
    else:
        model = load_model(p, map_location="cpu", dtype=dt)
    return model.to(device).eval()


def _is_adapter_run(p: Path) -> bool:
    """True when ``p`` is an adapter run folder (``tuning.json``, no model of its own)."""
    from lmlab.models.io import WEIGHTS
    from lmlab.tuning.io import META

    return p.is_dir() and (p / META).is_file() and not (p / WEIGHTS).is_file()


def _is_lmlab_file(f: Path) -> bool:
    """True when ``f`` is a safetensors file written by lmlab (it carries ``lmlab_config`` metadata)."""
    from safetensors import safe_open

    if not f.is_file():
        return False
    try:
        with safe_open(str(f), framework="pt") as sf:
            return "lmlab_config" in (sf.metadata() or {})
    except Exception:  # a damaged file: let the lmlab loader report it
        return True


def load_tokenizer_any(path: str | os.PathLike) -> Any:
    """Return the lmlab Tokenizer of ``path`` (its ``tokenizer.json``; an adapter run without one: its
    base's), or None when it has none."""
    from lmlab.data.tokenizers import load_tokenizer

    p = Path(path)
    folder = p if p.is_dir() else p.parent
    if not (folder / "tokenizer.json").is_file() and _is_adapter_run(folder):
        from lmlab.tuning import base_path

        return load_tokenizer_any(base_path(folder))
    return load_tokenizer(folder) if (folder / "tokenizer.json").is_file() else None


def eos_ids(path: str | os.PathLike, tokenizer: Any) -> list[int]:
    """Return the ids that end generation for the model in ``path``: the tokenizer's end-of-text
    id, else ``eos_token_id`` from its generation_config.json / config.json (HF folders)."""
    if tokenizer is not None and getattr(tokenizer, "eot_id", None) is not None:
        return [tokenizer.eot_id]
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    for name in ("generation_config.json", "config.json"):
        f = folder / name
        if f.is_file():
            try:
                eos = json.loads(f.read_text(encoding="utf-8")).get("eos_token_id")
            except json.JSONDecodeError:
                continue
            if eos is not None:
                return [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    return []


def load(path: str | os.PathLike, device: Any = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` for a run directory or a Hugging Face model folder.

    The model is in eval mode on ``device`` (``dtype``: None/'auto' keeps the stored one,
    or fp32/bf16/fp16 or a torch.dtype). The tokenizer is an
    :class:`lmlab.data.tokenizers.Tokenizer`, or None when the folder has no tokenizer.json.
    """
    model = load_model_any(path, device, dtype)
    return model, load_tokenizer_any(path)


def check_same_tokenizer(model_path: str | os.PathLike, data_dir: str | os.PathLike) -> None:
    """Refuse a model whose run folder holds another tokenizer than the data's (when both files exist)."""
    from lmlab.data.tokenizers import load_tokenizer

    src = Path(model_path) if Path(model_path).is_dir() else Path(model_path).parent
    a, b = src / "tokenizer.json", Path(data_dir) / "tokenizer.json"
    if a.is_file() and b.is_file() and load_tokenizer(a).hf.get_vocab() != load_tokenizer(b).hf.get_vocab():
        raise LmlabError(
            f"the model's tokenizer {a} differs from the data's {b}; "
            f"prepare the data with 'lmlab data prepare --tokenizer-file {a}'"
        )
