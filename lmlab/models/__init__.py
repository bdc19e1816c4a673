"""lmlab.models: model classes, their presets and their files (one registry of families)."""

from lmlab.models.decoder import Decoder, DecoderConfig
from lmlab.models.encdec import EncDecConfig, EncoderDecoder
from lmlab.models.presets import PRESETS
from lmlab.models.registry import FAMILIES, build_model, family_of, get_preset, load_model, save_model

__all__ = ["Decoder", "DecoderConfig", "EncDecConfig", "EncoderDecoder",
           "FAMILIES", "PRESETS", "build_model", "family_of", "get_preset",
           "load_model", "save_model"]
