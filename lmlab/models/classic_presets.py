"""Presets, construction and files of the neural LMs before the Transformer (NPLM, RNN/LSTM/GRU, ELMo).

``get_classic_preset("lstm-small", vocab_size=4096)`` returns a config;
:func:`build_classic` builds the model (a char-CNN ELMo also takes the tokenizer for its
character table). :func:`save_classic` writes ``model.safetensors`` with the config in
the metadata (``lmlab_arch``: nplm / rnn / elmo, ``lmlab_config``: JSON), as
:mod:`lmlab.models.io` does for decoders, so the file alone rebuilds the model;
:func:`load_any` loads any lmlab model file, these or a decoder.
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
from lmlab.models import elmo, nplm, rnn
from lmlab.models.io import read_arch

ClassicConfig = nplm.NPLMConfig | rnn.RNNConfig | elmo.ElmoConfig
ClassicModel = nplm.NPLM | rnn.RNNLM | elmo.ELMo
WEIGHTS = "model.safetensors"

# arch name -> (config class, model class)
ARCHS: dict[str, tuple[type, type]] = {
    nplm.ARCH: (nplm.NPLMConfig, nplm.NPLM),
    rnn.ARCH: (rnn.RNNConfig, rnn.RNNLM),
    elmo.ARCH: (elmo.ElmoConfig, elmo.ELMo),
}

_SMALL_RNN = dict(n_layer=2, d_emb=256, d_hidden=512, tie_embeddings=True, dropout_emb=0.05, dropout_in=0.1,
                  dropout_hid=0.1, dropout_out=0.2, block_size=128)
_TINY_RNN = dict(n_layer=1, d_emb=32, d_hidden=48, tie_embeddings=True, block_size=32)
_TINY_FILTERS = [[1, 16], [2, 16], [3, 32]]

# preset name -> (arch, config values); vocab_size usually comes from the data.
CLASSIC_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    # Bengio et al. 2003: order-6 model (5 tokens of context), direct connections on.
    "nplm-small": ("nplm", dict(context=5, d_emb=64, d_hidden=512, direct=True, dropout=0.1, block_size=128)),
    "nplm-tiny": ("nplm", dict(context=3, d_emb=16, d_hidden=64, direct=True, block_size=32)),
    "rnn-small": ("rnn", dict(_SMALL_RNN, cell="rnn")),
    "lstm-small": ("rnn", dict(_SMALL_RNN, cell="lstm")),
    "gru-small": ("rnn", dict(_SMALL_RNN, cell="gru")),
    "rnn-tiny": ("rnn", dict(_TINY_RNN, cell="rnn")),
    "lstm-tiny": ("rnn", dict(_TINY_RNN, cell="lstm")),
    "gru-tiny": ("rnn", dict(_TINY_RNN, cell="gru")),
    "elmo-small": ("elmo", dict(n_layer=2, d_model=256, d_hidden=512, dropout=0.1, block_size=128)),
    "elmo-char-small": ("elmo", dict(n_layer=2, d_model=256, d_hidden=512, char_cnn=True, max_chars=20,
                                     dropout=0.1, block_size=128)),
    "elmo-tiny": ("elmo", dict(n_layer=2, d_model=32, d_hidden=64, dropout=0.0, block_size=32)),
    "elmo-char-tiny": ("elmo", dict(n_layer=2, d_model=32, d_hidden=64, char_cnn=True, max_chars=12, d_char=8,
                                    filters=_TINY_FILTERS, n_highway=1, dropout=0.0, block_size=32)),
}


def is_classic_preset(name: str) -> bool:
    """Return True when ``name`` is one of :data:`CLASSIC_PRESETS`."""
    return name in CLASSIC_PRESETS


def get_classic_preset(name: str, **overrides: Any) -> ClassicConfig:
    """Return the config of preset ``name`` with ``overrides`` applied (e.g. ``vocab_size=4096``).

    Unknown names or override keys raise LmlabError listing the valid ones.
    """
    if name not in CLASSIC_PRESETS:
        raise LmlabError(f"unknown model preset {name!r}; the pre-Transformer presets are "
                         f"{', '.join(CLASSIC_PRESETS)}")
    arch, values = CLASSIC_PRESETS[name]
    return ARCHS[arch][0].from_dict({**values, **overrides})


def arch_of(config: ClassicConfig) -> str:
    """Return the architecture name (``lmlab_arch``) of a classic model config."""
    for arch, (cfg_cls, _) in ARCHS.items():
        if isinstance(config, cfg_cls):
            return arch
    raise LmlabError(f"{type(config).__name__} is not an NPLM, RNN or ELMo config")


def build_classic(config: ClassicConfig, tokenizer: Any = None) -> ClassicModel:
    """Return a freshly initialised model for ``config``.

    A char-CNN ELMo needs ``tokenizer`` (an lmlab Tokenizer) to fill its table of the
    characters of each vocabulary id.
    """
    model = ARCHS[arch_of(config)][1](config)
    if isinstance(model, elmo.ELMo) and model.char_cnn is not None:
        if tokenizer is None:
            raise LmlabError("a char-CNN ELMo needs the data's tokenizer to know each token's characters; "
                             "pass tokenizer=PreparedData.tokenizer()")
        model.set_vocabulary(tokenizer)
    return model


def save_classic(model: ClassicModel, path: str | os.PathLike) -> Path:
    """Atomically write ``model`` to ``path`` (a ``.safetensors`` file, or a folder that gets
    ``model.safetensors``) with its arch and config in the metadata; return the file written."""
    from safetensors.torch import save_model

    p = Path(path)
    if p.is_dir() or p.suffix != ".safetensors":
        p = p / WEIGHTS
    metadata = {"format": "pt", "lmlab_arch": arch_of(model.config),
                "lmlab_config": json.dumps(model.config.to_dict())}
    with atomic_path(p) as tmp:
        save_model(model, str(tmp), metadata=metadata)  # stores a tied matrix once
    return p


def _weights_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    f = p / WEIGHTS if p.is_dir() else p
    if not f.is_file():
        raise LmlabError(f"no model at {f}; give a run directory holding {WEIGHTS} or the file itself")
    return f


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a safetensors file into ``model`` (names and shapes must match); raise LmlabError if not."""
    from safetensors.torch import load_model

    f = _weights_file(path)
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


def load_classic(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> ClassicModel:
    """Rebuild an NPLM, RNN LM or ELMo from a file written by :func:`save_classic` (or its folder).

    Returns the model in eval mode on ``map_location``.
    """
    arch, values = read_arch(path)
    if arch not in ARCHS or values is None:
        raise LmlabError(f"{_weights_file(path)} holds a {arch or 'non-lmlab'} model, not an NPLM, RNN or "
                         "ELMo; load it with lmlab.models.load_model")
    cfg_cls, model_cls = ARCHS[arch]
    model = model_cls(cfg_cls.from_dict(values))
    load_weights(model, path)
    return model.to(map_location).eval()


def load_any(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load any lmlab model file (decoder, NPLM, RNN LM or ELMo), dispatching on ``lmlab_arch``."""
    arch, _ = read_arch(path)
    if arch in ARCHS:
        return load_classic(path, map_location)
    from lmlab.models.io import load_model

    return load_model(path, map_location=map_location)


# ---------------------------------------------------------------- wiring into `lmlab pretrain` / `lmlab eval`
def is_classic(model: nn.Module) -> bool:
    """Return True for an NPLM, RNN LM or ELMo (models :func:`save_classic` writes)."""
    return isinstance(model, (nplm.NPLM, rnn.RNNLM, elmo.ELMo))


def build_any(config: Any, tokenizer: Any = None) -> nn.Module:
    """Return a fresh model for a classic config (see :func:`build_classic`) or a ``DecoderConfig``."""
    if isinstance(config, tuple(cls for cls, _ in ARCHS.values())):
        return build_classic(config, tokenizer)
    from lmlab.models import build_model

    return build_model(config)


def save_any(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write any lmlab model with its config in the metadata; return the file written."""
    if is_classic(model):
        return save_classic(model, path)
    from lmlab.models.io import save_model

    return save_model(model, path)


def training_parts(model: nn.Module, tokens: Any, *, block_size: int, batch_size: int, seed: int,
                   rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu") -> tuple[Any, Any]:
    """Return ``(objective, batch source)`` that trains ``model`` on the token array ``tokens``.

    Recurrent LMs get truncated BPTT (contiguous streams, carried state); ELMo gets
    random windows and the joint forward + backward loss; the NPLM and decoders get
    random windows and the next-token loss.
    """
    from lmlab.train.bptt import TruncatedBPTT
    from lmlab.train.data import RandomWindows
    from lmlab.train.objectives import causal_lm_loss

    if isinstance(model, rnn.RNNLM):
        bptt = TruncatedBPTT(tokens, block_size=block_size, batch_size=batch_size, rank=rank,
                             world_size=world_size, device=device)
        return bptt.objective, bptt
    batches = RandomWindows(tokens, block_size=block_size, batch_size=batch_size, seed=seed, rank=rank,
                            world_size=world_size, device=device)
    return (elmo.bilm_loss if isinstance(model, elmo.ELMo) else causal_lm_loss), batches
