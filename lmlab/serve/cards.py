"""Model cards: what a served model is, read from its run folder's files (nothing is guessed).

A card is a JSON-ready dict: ``family`` (a decoder's style: gpt2, llama, deepseek, infini, or
plain decoder; an RNN's cell: rnn, lstm, gru; nplm, ...; a Hugging Face folder's model_type),
``arch`` (lmlab's family of model classes), ``preset`` (the ``model`` preset the run was trained
from, in its config.yaml), ``parameters``, ``context`` (tokens the model can attend to: a
decoder's block_size, the NPLM's n-1; None for recurrent models, which take any length),
``tokenizer`` (``{"kind", "vocab_size"}``), ``training_tokens`` (tokens this run trained on: the
count in its last checkpoint's trainer state, else the last ``tokens`` count in metrics.jsonl) and
``val_bpb`` (the last validation bits per byte in metrics.jsonl).
A token n-gram run (``ngram.json``, :mod:`lmlab.ngram.token_lm`) has family ``n-gram (order N,
smoothing)``, arch ``ngram``, its stored n-grams as parameters, context N-1, and training_tokens
and val_bpb from ngram.json.
Any figure the files do not record is None.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from lmlab.errors import LmlabError
from lmlab.models.io import WEIGHTS


def model_card(run_dir: Path, model: Any = None) -> dict[str, Any]:
    """Return the card of the model in ``run_dir`` (see the module doc); ``model``, when already
    loaded, gives the parameter count (else it is summed from the weight file's header)."""
    from lmlab.ngram.token_lm import is_token_ngram_run

    run_dir = Path(run_dir)
    if is_token_ngram_run(run_dir):
        return _ngram_card(run_dir, model)
    card: dict[str, Any] = {"family": None, "arch": None, "preset": _preset(run_dir), "parameters": None,
                            "context": None, "tokenizer": _tokenizer(run_dir), "training_tokens": None,
                            "val_bpb": None}
    card.update(_architecture(run_dir))
    if model is not None and hasattr(model, "parameters"):
        card["parameters"] = sum(p.numel() for p in model.parameters())
    elif card["parameters"] is None:
        card["parameters"] = _file_parameters(run_dir)
    card.update(_metrics(run_dir / "metrics.jsonl"))
    final = _checkpoint_tokens(run_dir)
    if final is not None:  # metrics.jsonl logs tokens every log_interval steps, not at the last one
        card["training_tokens"] = final
    return card


def _ngram_card(run_dir: Path, model: Any = None) -> dict[str, Any]:
    """The card of a token n-gram run; ``model`` (a TokenNgramLM), when loaded, gives the n-gram count
    (else the ARPA file's header does)."""
    from lmlab.ngram.arpa import read_arpa_counts
    from lmlab.ngram.token_lm import ARPA, META

    meta = _read_json(run_dir / META)
    meta = meta if isinstance(meta, dict) else {}
    order, smoothing = _number(meta.get("order")), meta.get("smoothing")
    if model is not None and hasattr(model, "model"):
        counts = model.model.ngram_counts()
        order = model.order
    else:
        counts = read_arpa_counts(run_dir / ARPA)
    order = int(order) if order is not None else (len(counts) if counts else None)
    if order is None:
        family = "n-gram"
    elif isinstance(smoothing, str) and smoothing:
        family = f"n-gram (order {order}, {smoothing})"
    else:
        family = f"n-gram (order {order})"
    tokens, bpb = _number(meta.get("training_tokens")), _number(meta.get("val_bpb"))
    return {"family": family, "arch": "ngram", "preset": None, "parameters": sum(counts) if counts else None,
            "context": order - 1 if order is not None else None, "tokenizer": _tokenizer(run_dir),
            "training_tokens": int(tokens) if tokens is not None else None,
            "val_bpb": float(bpb) if bpb is not None else None}


def _number(value: Any) -> int | float | None:
    """``value`` when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def decoder_family(values: dict[str, Any]) -> str:
    """Return the style of a decoder config (as stored in its metadata): deepseek (MLA attention),
    infini, llama (RMSNorm + RoPE), gpt2 (LayerNorm + learned positions) or decoder (any other mix)."""
    attn = values.get("attn", "mha")
    if attn == "mla":
        return "deepseek"
    if attn == "infini":
        return "infini"
    norm, pos = values.get("norm"), values.get("pos")
    if norm == "rmsnorm" and pos == "rope":
        return "llama"
    if norm == "layernorm" and pos == "learned":
        return "gpt2"
    return "decoder"


def _architecture(run_dir: Path) -> dict[str, Any]:
    """family, arch and context from the weight file's metadata, or a Hugging Face config.json."""
    from lmlab.models.io import read_arch

    weights = run_dir / WEIGHTS
    if weights.is_file():
        try:
            arch, values = read_arch(weights)
        except LmlabError:
            return {}
        values = values or {}
        if arch == "decoder" or (arch is None and "n_layer" in values):
            return {"arch": "decoder", "family": decoder_family(values), "context": values.get("block_size")}
        if arch == "rnn":
            return {"arch": arch, "family": values.get("cell", "lstm"), "context": None}
        if arch == "nplm":
            return {"arch": arch, "family": "nplm", "context": values.get("context")}
        if arch is not None:
            return {"arch": arch, "family": arch, "context": values.get("block_size")}
    hf = _read_json(run_dir / "config.json")
    if isinstance(hf, dict) and "model_type" in hf:
        return {"arch": "hf", "family": str(hf["model_type"]),
                "context": hf.get("max_position_embeddings") or hf.get("n_positions")}
    return {}


def _file_parameters(run_dir: Path) -> int | None:
    """The number of parameters in the run's safetensors files (header only, weights not read)."""
    from safetensors import safe_open

    files = [run_dir / WEIGHTS] if (run_dir / WEIGHTS).is_file() else sorted(run_dir.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    try:
        for f in files:
            with safe_open(str(f), framework="pt") as sf:
                total += sum(math.prod(sf.get_slice(k).get_shape()) for k in sf.keys())
    except Exception:  # safetensors raises its own error types for damaged headers
        return None
    return total


def _tokenizer(run_dir: Path) -> dict[str, Any] | None:
    """``{"kind", "vocab_size"}`` of the run's tokenizer.json; None when it has none or it is unreadable."""
    from lmlab.data.tokenizers import load_tokenizer

    if not (run_dir / "tokenizer.json").is_file():
        return None
    try:
        tok = load_tokenizer(run_dir)
    except LmlabError:
        return None
    return {"kind": tok.kind, "vocab_size": tok.vocab_size}


def _preset(run_dir: Path) -> str | None:
    """The ``model`` preset named in the run's config.yaml, if any."""
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    preset = cfg.get("model") if isinstance(cfg, dict) else None
    return preset if isinstance(preset, str) else None


def _metrics(path: Path) -> dict[str, Any]:
    """training_tokens (the last ``tokens`` count) and val_bpb (the last ``val_bpb``) of a
    metrics.jsonl; a missing file or figure gives None, a damaged line is skipped."""
    tokens = bpb = None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict):
            continue
        if isinstance(rec.get("tokens"), int | float) and not isinstance(rec["tokens"], bool):
            tokens = int(rec["tokens"])
        if isinstance(rec.get("val_bpb"), int | float) and not isinstance(rec["val_bpb"], bool):
            bpb = float(rec["val_bpb"])
    return {"training_tokens": tokens, "val_bpb": bpb}


def _checkpoint_tokens(run_dir: Path) -> int | None:
    """The ``tokens`` count in the trainer state of the run's latest checkpoint, if it records one."""
    from lmlab.train.checkpoint import LATEST, STATE_DIR, TRAINER

    latest = _read_json(run_dir / STATE_DIR / LATEST)
    folder = latest.get("dir") if isinstance(latest, dict) else None
    if not isinstance(folder, str) or Path(folder).name != folder or folder in ("", ".", ".."):
        return None
    state = _read_json(run_dir / STATE_DIR / folder / TRAINER)
    tokens = state.get("tokens") if isinstance(state, dict) else None
    return int(tokens) if isinstance(tokens, int) and not isinstance(tokens, bool) else None


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
