"""Convert Hugging Face BERT and RoBERTa checkpoints to and from :class:`~lmlab.models.encoder.Encoder`,
reading and writing the files directly (``transformers`` is not needed).

Architectures: ``BertForMaskedLM``, ``BertForPreTraining`` (MLM and next-sentence heads),
``BertModel`` (no MLM head: sentence encoders such as all-MiniLM-L6-v2; the encoder is
imported, the head left absent), ``RobertaForMaskedLM`` and ``RobertaModel``. Which heads a
checkpoint has is read from its weights.

Weight mapping (ours <- HF, ``P`` = ``bert.``/``roberta.`` or nothing for a bare model):
``tok_emb``/``pos_emb``/``type_emb``/``norm_emb`` <- ``P embeddings.{word,position,token_type}_embeddings``
/ ``LayerNorm``; per layer ``attn.qkv = cat(query, key, value)``, ``attn.proj`` <-
``attention.output.dense``, ``norm1`` <- ``attention.output.LayerNorm``, ``mlp.fc`` <-
``intermediate.dense``, ``mlp.proj`` <- ``output.dense``, ``norm2`` <- ``output.LayerNorm``;
``mlm.dense``/``mlm.norm``/``mlm.bias`` <- ``cls.predictions.transform.dense``/``.LayerNorm``/
``cls.predictions.bias`` (RoBERTa: ``lm_head.dense``/``layer_norm``/``bias``); the output
matrix is the token embedding (tied); ``pooler`` <- ``P pooler.dense``, ``nsp_head`` <-
``cls.seq_relationship``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lmlab.errors import LmlabError
from lmlab.fileio import atomic_path, write_json
from lmlab.interop.hf import check_shapes, copy_tokenizer_files, read_hf_config, read_hf_weights
from lmlab.models.encoder import Encoder, EncoderConfig

MODEL_TYPES = ("bert", "roberta")
ARCHITECTURES = ("BertForMaskedLM", "BertForPreTraining", "BertModel", "RobertaForMaskedLM", "RobertaModel")
REQUIRED_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
_ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_SUPPORTED = f"supported: {', '.join(ARCHITECTURES)}"
ENCODER_ROLES = ("mask", "cls", "sep", "pad", "unk")  # what a BERT/RoBERTa tokenizer_config names


def is_encoder_config(hf: dict[str, Any]) -> bool:
    """Return True when a ``config.json`` dict is a BERT or RoBERTa model (converted here)."""
    return hf.get("model_type") in MODEL_TYPES


def config_from_hf(hf: dict[str, Any], heads: dict[str, bool] | None = None) -> EncoderConfig:
    """Return the :class:`EncoderConfig` equal to a BERT/RoBERTa ``config.json`` dict.

    ``heads`` (``mlm``, ``pooler``, ``nsp``: which of them the weights hold) defaults to
    what the ``architectures`` entry implies. Unsupported variants raise LmlabError.
    """
    kind = hf.get("model_type")
    if kind not in MODEL_TYPES:
        raise LmlabError(f"model_type {kind!r} is not an encoder this converter knows; {_SUPPORTED}")
    for arch in hf.get("architectures") or []:
        if arch not in ARCHITECTURES:
            raise LmlabError(f"{arch} cannot be converted (its task head is not an encoder's); {_SUPPORTED}")
    missing = [k for k in REQUIRED_KEYS if k not in hf]
    if missing:
        raise LmlabError(f"config.json of this {kind} model lacks {', '.join(missing)}; re-save the model "
                         "with save_pretrained")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise LmlabError(f"a {kind} configured as a decoder (is_decoder/add_cross_attention) is not an "
                         f"encoder; {_SUPPORTED}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise LmlabError(f"position_embedding_type={hf['position_embedding_type']!r} is not supported; "
                         "only absolute (learned) positions are")
    act = _ACT_FROM_HF.get(hf.get("hidden_act", "gelu"))
    if act is None:
        raise LmlabError(f"hidden_act={hf['hidden_act']!r} is not supported; use one of "
                         f"{', '.join(_ACT_FROM_HF)}")
    if heads is None:
        arch = (hf.get("architectures") or ["BertForMaskedLM"])[0]
        heads = {"mlm": not arch.endswith("Model"), "nsp": arch == "BertForPreTraining",
                 "pooler": arch in ("BertForPreTraining", "BertModel", "RobertaModel")}
    n_pos = int(hf.get("max_position_embeddings", 512))
    pad_id = None
    if kind == "roberta":
        if act != "gelu" and heads["mlm"]:
            raise LmlabError(f"RoBERTa's MLM head applies exact GELU; hidden_act={hf['hidden_act']!r} would "
                             "differ between the blocks and the head, which is not supported")
        if heads["nsp"]:
            raise LmlabError("RoBERTa has no next-sentence head; the checkpoint's weights are not RoBERTa's")
        pad_id = int(hf.get("pad_token_id", 1))
        n_pos -= pad_id + 1
        if n_pos < 1:
            raise LmlabError(f"max_position_embeddings={hf.get('max_position_embeddings')} leaves no "
                             f"position after RoBERTa's offset of pad_token_id + 1 = {pad_id + 1}")
    return EncoderConfig(
        vocab_size=hf["vocab_size"], block_size=n_pos, type_vocab_size=int(hf.get("type_vocab_size", 2)),
        n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], d_model=hf["hidden_size"],
        d_ff=hf["intermediate_size"], act=act, norm_eps=float(hf.get("layer_norm_eps", 1e-12)), pad_id=pad_id,
        mlm_head=heads["mlm"], pooler=heads["pooler"], nsp=heads["nsp"],
        dropout=float(hf.get("hidden_dropout_prob", 0.0)), init_std=float(hf.get("initializer_range", 0.02)))


def _normalise_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the TensorFlow-era ``LayerNorm.gamma``/``beta`` of old checkpoints to ``weight``/``bias``."""
    out = {}
    for k, v in state.items():
        if k.endswith("LayerNorm.gamma"):
            k = k[: -len("gamma")] + "weight"
        elif k.endswith("LayerNorm.beta"):
            k = k[: -len("beta")] + "bias"
        out[k] = v
    return out


def _prefix(state: dict[str, torch.Tensor], kind: str) -> str:
    return f"{kind}." if f"{kind}.embeddings.word_embeddings.weight" in state else ""


def heads_in(state: dict[str, torch.Tensor], kind: str) -> dict[str, bool]:
    """Return which heads a BERT/RoBERTa state dict holds: ``mlm``, ``pooler``, ``nsp``."""
    p = _prefix(state, kind)
    mlm = "cls.predictions.transform.dense.weight" if kind == "bert" else "lm_head.dense.weight"
    return {"mlm": mlm in state, "pooler": f"{p}pooler.dense.weight" in state,
            "nsp": "cls.seq_relationship.weight" in state}


def state_from_hf(kind: str, state: dict[str, torch.Tensor], cfg: EncoderConfig,
                  src: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return our state dict for the BERT/RoBERTa tensors ``state`` (``kind``: bert or roberta)."""
    state = _normalise_names(state)
    p = _prefix(state, kind)
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        if key not in state:
            raise LmlabError(f"{src} lacks weight {key!r}; the checkpoint does not match its config.json")
        return state.pop(key)

    def pair(ours: str, theirs: str) -> None:
        out[f"{ours}.weight"], out[f"{ours}.bias"] = take(f"{theirs}.weight"), take(f"{theirs}.bias")

    e = p + "embeddings."
    out["tok_emb.weight"] = take(e + "word_embeddings.weight")
    out["pos_emb.weight"] = take(e + "position_embeddings.weight")
    out["type_emb.weight"] = take(e + "token_type_embeddings.weight")
    pair("norm_emb", e + "LayerNorm")
    for buffer in ("position_ids", "token_type_ids"):
        state.pop(e + buffer, None)
    for i in range(cfg.n_layer):
        h, q = f"{p}encoder.layer.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            out[q + f"attn.qkv.{part}"] = torch.cat(
                [take(h + f"attention.self.{n}.{part}") for n in ("query", "key", "value")], dim=0)
        pair(q + "attn.proj", h + "attention.output.dense")
        pair(q + "norm1", h + "attention.output.LayerNorm")
        pair(q + "mlp.fc", h + "intermediate.dense")
        pair(q + "mlp.proj", h + "output.dense")
        pair(q + "norm2", h + "output.LayerNorm")
    if cfg.pooler:
        pair("pooler", p + "pooler.dense")
    if cfg.mlm_head:
        head = "cls.predictions." if kind == "bert" else "lm_head."
        pair("mlm.dense", head + ("transform.dense" if kind == "bert" else "dense"))
        pair("mlm.norm", head + ("transform.LayerNorm" if kind == "bert" else "layer_norm"))
        out["mlm.bias"] = take(head + "bias")
        decoder = state.pop(head + "decoder.weight", None)
        if decoder is not None and not torch.equal(decoder, out["tok_emb.weight"]):
            raise LmlabError(f"{src} has an MLM output matrix that differs from its word embeddings; untied "
                             "MLM heads are not supported")
        decoder_bias = state.pop(head + "decoder.bias", None)
        if decoder_bias is not None and not torch.equal(decoder_bias, out["mlm.bias"]):
            raise LmlabError(f"{src} has an MLM decoder bias that differs from its output bias; "
                             "the checkpoint is not a standard BERT/RoBERTa")
    if cfg.nsp:
        pair("nsp_head", "cls.seq_relationship")
    if state:
        raise LmlabError(f"{src} has weights this conversion does not know ({', '.join(sorted(state)[:3])}); "
                         f"only the encoder and its pretraining heads convert; {_SUPPORTED}")
    return out


def load_hf_encoder(src: str | os.PathLike, dtype: torch.dtype | None = None) -> Encoder:
    """Return an :class:`Encoder` holding the weights of the BERT/RoBERTa folder ``src`` (in the
    stored dtype unless ``dtype`` is given), in eval mode on the CPU. A checkpoint without an
    MLM head (``BertModel``) gives an encoder with ``config.mlm_head`` False."""
    hf = read_hf_config(src)
    config_from_hf(hf)  # refuse unsupported configs before reading the weights
    state = _normalise_names(read_hf_weights(src))
    kind = hf["model_type"]
    cfg = config_from_hf(hf, heads_in(state, kind))
    ours = state_from_hf(kind, state, cfg, str(src))
    if dtype is not None:
        ours = {k: v.to(dtype) for k, v in ours.items()}
    with torch.device("meta"):
        model = Encoder(cfg)
    check_shapes(ours, model.state_dict(), src)
    model.load_state_dict(ours, strict=True, assign=True)
    return model.eval()


def hf_architecture(cfg: EncoderConfig) -> str:
    """Return the Hugging Face class a model of ``cfg`` exports as, or raise LmlabError."""
    if cfg.pad_id is None:
        if not cfg.mlm_head:
            return "BertModel"
        return "BertForPreTraining" if cfg.nsp else "BertForMaskedLM"
    if cfg.nsp:
        raise LmlabError("a RoBERTa-style encoder (pad_id set) with a next-sentence head has no Hugging Face "
                         "class; export it without nsp, or with pad_id unset (BERT)")
    if cfg.mlm_head and cfg.act != "gelu":
        raise LmlabError(f"RobertaForMaskedLM's head applies exact GELU; this model uses {cfg.act}")
    return "RobertaForMaskedLM" if cfg.mlm_head else "RobertaModel"


def config_to_hf(cfg: EncoderConfig, dtype: torch.dtype = torch.float32,
                 pad_id: int | None = None) -> dict[str, Any]:
    """Return the Hugging Face ``config.json`` dict of ``cfg`` (BERT or RoBERTa)."""
    arch = hf_architecture(cfg)
    roberta = arch.startswith("Roberta")
    out = {"architectures": [arch], "model_type": "roberta" if roberta else "bert",
           "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layer,
           "num_attention_heads": cfg.n_head, "intermediate_size": cfg.d_ff,
           "hidden_act": _ACT_TO_HF[cfg.act], "hidden_dropout_prob": cfg.dropout,
           "attention_probs_dropout_prob": cfg.dropout, "max_position_embeddings": cfg.n_positions,
           "type_vocab_size": cfg.type_vocab_size, "initializer_range": cfg.init_std,
           "layer_norm_eps": cfg.norm_eps, "pad_token_id": cfg.pad_id if roberta else (pad_id or 0),
           "position_embedding_type": "absolute", "tie_word_embeddings": True,
           "torch_dtype": _DTYPE_NAMES.get(dtype, "float32")}
    if roberta:
        out.update(bos_token_id=0, eos_token_id=2)
    return out


def state_to_hf(model: Encoder) -> dict[str, torch.Tensor]:
    """Return the Hugging Face state dict of ``model`` (the tied output matrix left out, as HF saves it)."""
    cfg = model.config
    arch = hf_architecture(cfg)
    kind = "roberta" if arch.startswith("Roberta") else "bert"
    ours = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    p = "" if arch.endswith("Model") else f"{kind}."
    out: dict[str, torch.Tensor] = {}

    def pair(theirs: str, name: str) -> None:
        out[f"{theirs}.weight"], out[f"{theirs}.bias"] = ours[f"{name}.weight"], ours[f"{name}.bias"]

    e = p + "embeddings."
    out[e + "word_embeddings.weight"] = ours["tok_emb.weight"]
    out[e + "position_embeddings.weight"] = ours["pos_emb.weight"]
    out[e + "token_type_embeddings.weight"] = ours["type_emb.weight"]
    pair(e + "LayerNorm", "norm_emb")
    for i in range(cfg.n_layer):
        h, q = f"{p}encoder.layer.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            for name, t in zip(("query", "key", "value"), ours[q + f"attn.qkv.{part}"].chunk(3, dim=0)):
                out[h + f"attention.self.{name}.{part}"] = t
        pair(h + "attention.output.dense", q + "attn.proj")
        pair(h + "attention.output.LayerNorm", q + "norm1")
        pair(h + "intermediate.dense", q + "mlp.fc")
        pair(h + "output.dense", q + "mlp.proj")
        pair(h + "output.LayerNorm", q + "norm2")
    if cfg.pooler and (arch.endswith("Model") or cfg.nsp):
        pair(p + "pooler.dense", "pooler")
    if cfg.mlm_head:
        if kind == "bert":
            pair("cls.predictions.transform.dense", "mlm.dense")
            pair("cls.predictions.transform.LayerNorm", "mlm.norm")
            out["cls.predictions.bias"] = ours["mlm.bias"]
        else:
            pair("lm_head.dense", "mlm.dense")
            pair("lm_head.layer_norm", "mlm.norm")
            out["lm_head.bias"] = ours["mlm.bias"]
    if cfg.nsp:
        pair("cls.seq_relationship", "nsp_head")
    return {k: v.contiguous().clone() for k, v in out.items()}


def export_hf_encoder(model: Encoder, out: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None,
                      dtype: torch.dtype | None = None) -> list[str]:
    """Write ``model`` as a Hugging Face folder ``out`` (config.json, model.safetensors and, when
    ``tokenizer_dir`` holds a tokenizer.json, the tokenizer files) that ``AutoModelForMaskedLM``
    (``BertForPreTraining`` with NSP, ``AutoModel`` without an MLM head) and ``AutoTokenizer`` load.
    Returns notes for the user (e.g. a pooler that the chosen class has no place for)."""
    from safetensors.torch import save_file

    cfg = model.config
    arch = hf_architecture(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = state_to_hf(model)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    notes = []
    if cfg.pooler and not (arch.endswith("Model") or cfg.nsp):
        notes.append(f"{arch} has no pooler, so the model's pooler weights were left out")
    pad_id = _write_tokenizer(out, Path(tokenizer_dir) if tokenizer_dir is not None else None, cfg)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_json(out / "config.json", config_to_hf(cfg, next(iter(state.values())).dtype, pad_id))
    return notes


def _write_tokenizer(out: Path, src: Path | None, cfg: EncoderConfig) -> int | None:
    """Copy or write the tokenizer files into ``out``; return the padding id (None without a tokenizer).

    A folder imported from Hugging Face keeps its own tokenizer_config.json; an lmlab
    tokenizer gets one naming the special tokens found in it ([MASK]/<mask>/<|mask|>, ...).
    """
    from lmlab.data.special import special_token
    from lmlab.data.tokenizers import load_tokenizer

    if src is None or not (src / "tokenizer.json").is_file():
        return None
    tokenizer = load_tokenizer(src / "tokenizer.json")
    pad = special_token(tokenizer, "pad")
    if (src / "tokenizer_config.json").is_file():
        copy_tokenizer_files(src, out)
        return pad[1] if pad else None
    specials = {f"{role}_token": found[0] for role in ENCODER_ROLES
                if (found := special_token(tokenizer, role)) is not None}
    with atomic_path(out / "tokenizer.json") as tmp:
        shutil.copyfile(src / "tokenizer.json", tmp)
    write_json(out / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast",
                                               "model_max_length": cfg.block_size,
                                               "clean_up_tokenization_spaces": False, **specials})
    write_json(out / "special_tokens_map.json", specials)
    return pad[1] if pad else None
