"""lmlab.models: model classes, presets and their files."""

from lmlab.models.decoder import Decoder, DecoderConfig
from lmlab.models.io import load_model, save_model
from lmlab.models.presets import PRESETS, get_preset


def build_model(cfg: DecoderConfig) -> Decoder:
    """Return a freshly initialised :class:`Decoder` for ``cfg``."""
    return Decoder(cfg)


__all__ = ["Decoder", "DecoderConfig", "PRESETS", "get_preset", "build_model", "save_model", "load_model"]
