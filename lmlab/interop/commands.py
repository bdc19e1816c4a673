"""CLI commands ``lmlab import hf`` and ``lmlab export hf``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lmlab.config import Precision, arg, save_config
from lmlab.errors import LmlabError


@dataclass
class ImportHfConfig:
    src: Path | None = arg(None, "Hugging Face model folder: config.json + model.safetensors or "
                                 "pytorch_model.bin (+ tokenizer.json)")
    out: Path | None = arg(None, "run folder to write (model.safetensors, tokenizer.json, config.yaml)")
    dtype: Precision = arg("auto", "weights dtype (auto: as stored)")
    overwrite: bool = arg(False, "replace a model already in --out")
    json: bool = arg(False, "print the result as one JSON object")


def import_hf(cfg: ImportHfConfig) -> None:
    """Convert a Hugging Face LlamaForCausalLM, GPT2LMHeadModel, T5ForConditionalGeneration or
    BartForConditionalGeneration folder into an lmlab run folder.

    Reads the files directly (transformers is not needed). Writes OUT/model.safetensors,
    OUT/config.yaml and copies tokenizer.json, tokenizer_config.json,
    special_tokens_map.json and generation_config.json when present. Example:
    lmlab import hf --src ~/models/Llama-3.2-1B --out runs/llama1b
    """
    from lmlab.device import parse_dtype
    from lmlab.interop import hf_encdec
    from lmlab.interop.hf import copy_tokenizer_files, load_hf, read_hf_config
    from lmlab.models.io import WEIGHTS
    from lmlab.models.registry import save_model

    if cfg.src is None or cfg.out is None:
        raise LmlabError("give both --src HF_FOLDER and --out RUN_FOLDER")
    if (Path(cfg.out) / WEIGHTS).exists() and not cfg.overwrite:
        raise LmlabError(f"{cfg.out} already holds a model; pass --overwrite or choose another --out")
    read = hf_encdec.load_hf_encdec if hf_encdec.handles(cfg.src) else load_hf
    model = read(cfg.src, parse_dtype(cfg.dtype))
    kind = read_hf_config(cfg.src)["model_type"]  # load_hf refused a config.json without a known one
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out / WEIGHTS)
    copied = copy_tokenizer_files(cfg.src, out)
    save_config(cfg, out / "config.yaml")
    info = {"model_type": kind, "params": model.num_params(), "dtype": str(model.tok_emb.weight.dtype)[6:],
            "out": str(out), "files": [WEIGHTS, *copied, "config.yaml"]}
    if cfg.json:
        print(json.dumps(info))
        return
    print(f"imported {kind} ({info['params']:,} params, {info['dtype']}) from {cfg.src} into {out}: "
          f"{', '.join(info['files'])}")
    if "tokenizer.json" not in copied:
        print(f"note: {cfg.src} has no tokenizer.json; copy one into {out} before 'lmlab generate'")


@dataclass
class ExportHfConfig:
    ckpt: Path | None = arg(None, "run folder or model.safetensors to export")
    out: Path | None = arg(None, "Hugging Face folder to write")
    dtype: Precision = arg("auto", "weights dtype (auto: as stored)")
    overwrite: bool = arg(False, "replace a model already in --out")
    json: bool = arg(False, "print the result as one JSON object")


def export_hf(cfg: ExportHfConfig) -> None:
    """Write a run's model as a Hugging Face folder (LlamaForCausalLM, GPT2LMHeadModel,
    T5ForConditionalGeneration or BartForConditionalGeneration).

    OUT gets config.json, model.safetensors, generation_config.json and, when the run has
    a tokenizer.json, tokenizer.json + tokenizer_config.json + special_tokens_map.json, so
    AutoModelForCausalLM (AutoModelForSeq2SeqLM) and AutoTokenizer.from_pretrained(OUT) load
    it. Example: lmlab export hf --ckpt runs/tiny --out runs/tiny-hf
    """
    from lmlab.device import parse_dtype
    from lmlab.interop.hf import export_hf as write_hf
    from lmlab.interop.hf import hf_family
    from lmlab.interop.hf_encdec import ARCHITECTURES, export_hf_encdec
    from lmlab.models.encdec import EncoderDecoder
    from lmlab.models.registry import load_model

    if cfg.ckpt is None or cfg.out is None:
        raise LmlabError("give both --ckpt RUN and --out HF_FOLDER")
    out = Path(cfg.out)
    if (out / "model.safetensors").exists() and not cfg.overwrite:
        raise LmlabError(f"{out} already holds a model; pass --overwrite or choose another --out")
    model = load_model(cfg.ckpt, dtype=parse_dtype(cfg.dtype))
    src = Path(cfg.ckpt) if Path(cfg.ckpt).is_dir() else Path(cfg.ckpt).parent
    if isinstance(model, EncoderDecoder):
        from lmlab.interop.hf_encdec import hf_family as encdec_family

        architecture = ARCHITECTURES[encdec_family(model.config)]
        export_hf_encdec(model, out, tokenizer_dir=src)
    else:
        architecture = "LlamaForCausalLM" if hf_family(model.config) == "llama" else "GPT2LMHeadModel"
        write_hf(model, out, tokenizer_dir=src)
    save_config(cfg, out / "config.yaml")
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    info = {"architecture": architecture,
            "params": model.num_params(), "out": str(out), "files": files}
    if cfg.json:
        print(json.dumps(info))
        return
    print(f"exported {info['architecture']} ({info['params']:,} params) to {out}: {', '.join(files)}")
    if not (src / "tokenizer.json").is_file():
        print(f"note: {src} has no tokenizer.json, so {out} has no tokenizer")
