"""One registry of model families: presets, construction, files.

Each family (``lmlab_arch`` in a model file) is a config class, a model class and one
table of presets. :func:`get_preset` finds a preset in any family (as litgpt's
``Config.from_name``), :func:`build_model` builds any config, :func:`save_model` and
:func:`load_model` write and read any lmlab model file. New architectures are a row
here, or better, a preset of an existing family.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models import elmo, encdec, encoder, heads, nplm, presets, rnn
from lmlab.models.decoder import Decoder, DecoderConfig
from lmlab.models.io import load_decoder, load_weights, read_arch, save_decoder, save_module


@dataclass(frozen=True)
class Family:
    """A model family: its config and model classes and its table of presets."""

    arch: str
    config: type
    model: type
    presets: dict[str, dict[str, Any]]


FAMILIES: dict[str, Family] = {
    "decoder": Family("decoder", DecoderConfig, Decoder, presets.PRESETS),
    nplm.ARCH: Family(nplm.ARCH, nplm.NPLMConfig, nplm.NPLM, nplm.PRESETS),
    rnn.ARCH: Family(rnn.ARCH, rnn.RNNConfig, rnn.RNNLM, rnn.PRESETS),
    elmo.ARCH: Family(elmo.ARCH, elmo.ElmoConfig, elmo.ELMo, elmo.PRESETS),
    encoder.ARCH: Family(encoder.ARCH, encoder.EncoderConfig, encoder.Encoder, encoder.PRESETS),
    encdec.ARCH: Family(encdec.ARCH, encdec.EncDecConfig, encdec.EncoderDecoder, encdec.PRESETS),
    # a task head on one of the families above (no presets: made by 'lmlab finetune')
    heads.ARCH: Family(heads.ARCH, heads.ClassifierConfig, heads.SequenceClassifier, {}),
}


def preset_names() -> list[str]:
    """Return every preset name, family by family."""
    return [name for fam in FAMILIES.values() for name in fam.presets]


def preset_family(name: str) -> Family:
    """Return the family that has preset ``name``; raise LmlabError listing the presets if none."""
    for fam in FAMILIES.values():
        if name in fam.presets:
            return fam
    raise LmlabError(f"unknown model preset {name!r}; choose one of {', '.join(preset_names())}")


def get_preset(name: str, **overrides: Any) -> Any:
    """Return the config of preset ``name`` (any family) with ``overrides`` applied.

    Unknown names or override keys raise LmlabError listing the valid ones.
    """
    fam = preset_family(name)
    values = copy.deepcopy(fam.presets[name])  # the table's nested dicts and lists stay untouched
    values.update(overrides)
    return fam.config.from_dict(values)


def family_of(obj: Any) -> Family:
    """Return the family of a model or a config."""
    for fam in FAMILIES.values():
        if isinstance(obj, (fam.config, fam.model)):
            return fam
    raise LmlabError(f"{type(obj).__name__} is not a model or config of an lmlab family "
                     f"({', '.join(FAMILIES)})")


def config_from_dict(arch: str | None, values: dict[str, Any]) -> Any:
    """Return the config of family ``arch`` (None: decoder) built from ``values``."""
    return FAMILIES.get(arch or "decoder", FAMILIES["decoder"]).config.from_dict(values)


def build_model(config: Any, tokenizer: Any = None) -> nn.Module:
    """Return a freshly initialised model for ``config`` (any family).

    A char-CNN ELMo needs ``tokenizer`` (an lmlab Tokenizer) to fill its table of the
    characters of each vocabulary id.
    """
    model = family_of(config).model(config)
    if isinstance(model, elmo.ELMo) and model.char_cnn is not None:
        if tokenizer is None:
            raise LmlabError("a char-CNN ELMo needs the data's tokenizer to know each token's characters; "
                             "pass tokenizer=PreparedData.tokenizer()")
        model.set_vocabulary(tokenizer)
    return model


def save_model(model: nn.Module, path: str | os.PathLike) -> Path:
    """Atomically write ``model`` (any family) with its arch and config in the metadata; return the file."""
    if isinstance(model, Decoder):
        return save_decoder(model, path)
    return save_module(model, path, family_of(model).arch, model.config.to_dict())


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> nn.Module:
    """Rebuild any lmlab model from its file (or run folder), dispatching on ``lmlab_arch``.

    Returns the model in eval mode on ``map_location`` (cast to ``dtype`` if given). A
    missing or damaged file raises LmlabError.
    """
    arch, values = read_arch(path)
    if arch in FAMILIES and arch != "decoder":
        if values is None:
            raise LmlabError(f"{path} has no lmlab_config metadata; re-save the model")
        fam = FAMILIES[arch]
        model = fam.model(fam.config.from_dict(values))
        load_weights(model, path)
        model = model.to(map_location)
        if dtype is not None:
            model = model.to(dtype=dtype)
        return model.eval()
    return load_decoder(path, map_location=map_location, dtype=dtype)
