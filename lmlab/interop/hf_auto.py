"""Which Hugging Face converter handles a folder or a model: decoders (:mod:`lmlab.interop.hf`),
MLA decoders (:mod:`lmlab.interop.hf_deepseek`), encoders (:mod:`lmlab.interop.hf_encoder`) and
encoder-decoders (:mod:`lmlab.interop.hf_encdec`),
dispatched on ``config.json``'s ``model_type`` (import)
or on the model's class (export). ``lmlab import hf``, ``lmlab export hf`` and ``lmlab.load``
go through here, so a new family is one line in each function."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.interop import hf, hf_deepseek, hf_encdec, hf_encoder
from lmlab.models.decoder import Decoder
from lmlab.models.encdec import EncoderDecoder
from lmlab.models.encoder import Encoder


def supported() -> str:
    """Return the supported model types and architectures as one phrase for error messages."""
    return (f"supported: {', '.join(hf.SUPPORTED)} (decoders: LlamaForCausalLM, GPT2LMHeadModel); "
            f"{', '.join(hf_deepseek.MODEL_TYPES)} ({hf_deepseek.ARCHITECTURE}, dense); "
            f"{', '.join(hf_encoder.MODEL_TYPES)} (encoders: {', '.join(hf_encoder.ARCHITECTURES)}); "
            f"{', '.join(hf_encdec.MODEL_TYPES)} "
            f"(encoder-decoders: {', '.join(hf_encdec.ARCHITECTURES.values())})")


def load_hf_model(src: str | os.PathLike, dtype: torch.dtype | None = None) -> tuple[nn.Module, str]:
    """Return ``(model, model_type)`` for the Hugging Face folder ``src``, in eval mode on the CPU
    (stored dtype unless ``dtype``). An unsupported ``model_type`` raises LmlabError naming the
    supported ones."""
    config = hf.read_hf_config(src)
    kind = config.get("model_type")
    if hf_encoder.is_encoder_config(config):
        return hf_encoder.load_hf_encoder(src, dtype), kind
    if kind in hf_encdec.MODEL_TYPES:
        return hf_encdec.load_hf_encdec(src, dtype), kind
    if kind in hf.SUPPORTED:
        return hf.load_hf(src, dtype), kind
    if kind in hf_deepseek.MODEL_TYPES:
        return hf_deepseek.load_hf_deepseek(src, dtype), kind
    raise LmlabError(f"model_type {kind!r} in {Path(src) / 'config.json'} cannot be converted; {supported()}")


def export_hf_model(model: nn.Module, out: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None,
                    dtype: torch.dtype | None = None) -> tuple[str, list[str]]:
    """Write ``model`` as a Hugging Face folder ``out``; return ``(architecture, notes for the user)``."""
    if isinstance(model, Encoder):
        arch = hf_encoder.hf_architecture(model.config)
        return arch, hf_encoder.export_hf_encoder(model, out, tokenizer_dir, dtype)
    if isinstance(model, EncoderDecoder):
        hf_encdec.export_hf_encdec(model, out, tokenizer_dir, dtype)
        return hf_encdec.ARCHITECTURES[hf_encdec.hf_family(model.config)], []
    if not isinstance(model, Decoder):
        raise LmlabError(f"a {type(model).__name__} has no Hugging Face counterpart; {supported()}")
    if model.config.attn == "mla":
        hf_deepseek.export_hf_deepseek(model, out, tokenizer_dir, dtype)
        return hf_deepseek.ARCHITECTURE, []
    family = hf.hf_family(model.config)
    hf.export_hf(model, out, tokenizer_dir, dtype)
    return ("LlamaForCausalLM" if family == "llama" else "GPT2LMHeadModel"), []

