"""Convert Hugging Face ``T5ForConditionalGeneration`` (v1.0 and v1.1 gated) and
``BartForConditionalGeneration`` checkpoints to and from :class:`~lmlab.models.encdec.EncoderDecoder`,
reading and writing the files directly (``transformers`` is not needed).

Weight mapping (ours <- HF), one table per family used both ways (fused tensors are the HF
tensors concatenated on the output dimension, so export splits them in equal parts):
- T5: ``attn.qkv = cat(q, k, v)``, ``cross_attn.q = q``, ``cross_attn.kv = cat(k, v)``,
  ``mlp.fc/proj = wi/wo`` or gated ``mlp.w13 = cat(wi_0, wi_1)``, ``mlp.w2 = wo``; the relative
  position bias of each stack's first layer becomes the stack's ``rel``.
- BART: the same with ``q_proj``/``k_proj``/``v_proj``/``out_proj``, ``fc1``/``fc2``, the learned
  positions (offset 2), ``layernorm_embedding`` and ``final_logits_bias``.

T5 in transformers 5 always ties its head to the shared embedding unless the checkpoint holds a
different ``lm_head.weight``, and scales the decoder output by ``d_model**-0.5`` when
``scale_decoder_outputs`` (old files: ``tie_word_embeddings`` not false); both are read as such.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lmlab.errors import LmlabError
from lmlab.fileio import atomic_path, write_json
from lmlab.interop.hf import _read_json, _token_str, check_shapes, read_hf_config, read_hf_weights
from lmlab.models.encdec import EncDecConfig, EncoderDecoder

MODEL_TYPES = ("t5", "bart")
ARCHITECTURES = {"t5": "T5ForConditionalGeneration", "bart": "BartForConditionalGeneration"}
REQUIRED_KEYS = {
    "t5": ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"),
    "bart": ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
             "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings"),
}
_ACTS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
# Special tokens written to tokenizer_config.json for an lmlab tokenizer: role -> names to look for.
_SPECIAL_NAMES = {"unk_token": ("<unk>",), "mask_token": ("<mask>", "<|mask|>", "[MASK]")}


def handles(src: str | os.PathLike) -> bool:
    """True when the Hugging Face folder ``src`` holds a model type this module converts (T5, BART)."""
    return read_hf_config(src).get("model_type") in MODEL_TYPES


def _check_required(hf: dict[str, Any], kind: str) -> None:
    missing = [k for k in REQUIRED_KEYS[kind] if k not in hf]
    if missing:
        raise LmlabError(f"config.json of this {kind} model lacks {', '.join(missing)}; add them (see the "
                         "model card) or re-save the model with save_pretrained")
    for k in REQUIRED_KEYS[kind]:
        if isinstance(hf[k], bool) or not isinstance(hf[k], int) or hf[k] < 1:
            raise LmlabError(f"config.json of this {kind} model has {k}={hf[k]!r}; it must be a whole number "
                             "of at least 1; fix config.json or re-save the model")


def _t5_activation(hf: dict[str, Any]) -> tuple[str, bool]:
    """Return ``(activation, gated)`` of a T5 config, as ``T5Config`` derives them."""
    proj = str(hf.get("feed_forward_proj", "relu"))
    parts = proj.split("-")
    gated = parts[0] == "gated" and len(parts) == 2
    name = "gelu_new" if proj == "gated-gelu" else hf.get("dense_act_fn", parts[-1])
    if name not in _ACTS or (len(parts) > 1 and not gated):
        raise LmlabError(f"T5 with feed_forward_proj={proj!r} is not supported; use relu, gelu, gelu_new or "
                         "gated-gelu")
    return _ACTS[name], gated


def config_from_hf(hf: dict[str, Any], tied: bool) -> EncDecConfig:
    """Return the :class:`EncDecConfig` of a T5 or BART ``config.json`` dict; ``tied``: whether the
    checkpoint's head is the shared embedding (no separate ``lm_head.weight``)."""
    kind = hf.get("model_type")
    if kind not in MODEL_TYPES:
        raise LmlabError(f"model_type {kind!r} is not an encoder-decoder lmlab converts; supported: "
                         f"{', '.join(MODEL_TYPES)}")
    _check_required(hf, kind)
    if kind == "t5":
        act, gated = _t5_activation(hf)
        scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
        pad = hf.get("pad_token_id", 0)
        start = hf.get("decoder_start_token_id")
        return EncDecConfig(
            vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", 512), n_layer=hf["num_layers"],
            n_dec_layer=hf.get("num_decoder_layers") or hf["num_layers"], n_head=hf["num_heads"],
            d_model=hf["d_model"], d_ff=hf["d_ff"], head_dim=hf["d_kv"], norm="rmsnorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-6), post_norm=False, final_norm=True, act=act,
            gated=gated, bias=False, pos="relative", rel_buckets=hf.get("relative_attention_num_buckets", 32),
            rel_max_distance=hf.get("relative_attention_max_distance", 128), attn_scale=1.0,
            tie_embeddings=tied, scale_logits=bool(scale), dropout=float(hf.get("dropout_rate", 0.1)),
            init="t5", pad_token_id=pad, eos_token_id=_first(hf.get("eos_token_id", 1)),
            decoder_start_token_id=pad if start is None else start, objective="span-corruption")
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"),
                 ("encoder_ffn_dim", "decoder_ffn_dim")):
        if hf[a] != hf[b]:
            raise LmlabError(f"BART with {a}={hf[a]} != {b}={hf[b]} is not supported; both sides must match")
    act = hf.get("activation_function", "gelu")
    if act not in _ACTS:
        raise LmlabError(f"BART with activation_function={act!r} is not supported; "
                         "use gelu, gelu_new or relu")
    if hf.get("normalize_before") or hf.get("add_final_layer_norm"):
        raise LmlabError("pre-norm BART variants (mBART) are not supported; "
                         "only BartForConditionalGeneration is")
    d, heads = hf["d_model"], hf["encoder_attention_heads"]
    if d % heads:
        raise LmlabError(f"BART with d_model={d} not divisible by {heads} heads cannot be converted")
    return EncDecConfig(
        vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"], n_layer=hf["encoder_layers"],
        n_dec_layer=hf["decoder_layers"], n_head=heads, d_model=d, d_ff=hf["encoder_ffn_dim"],
        norm="layernorm", norm_eps=1e-5, post_norm=True, act=_ACTS[act], bias=True, pos="learned",
        pos_offset=2,
        embed_scale=bool(hf.get("scale_embedding", False)), embed_norm=True, tie_embeddings=tied,
        logits_bias=True, dropout=float(hf.get("dropout", 0.1)), init_std=hf.get("init_std", 0.02),
        pad_token_id=hf.get("pad_token_id", 1), eos_token_id=_first(hf.get("eos_token_id", 2)),
        bos_token_id=hf.get("bos_token_id"), decoder_start_token_id=hf.get("decoder_start_token_id", 2),
        objective="denoise")


def _first(value: Any) -> int:
    return int(value[0] if isinstance(value, list) else value)


def hf_family(cfg: EncDecConfig) -> str:
    """Return ``'t5'`` or ``'bart'``: the Hugging Face architecture equal to ``cfg``, or raise LmlabError."""
    if (cfg.pos == "relative" and cfg.norm == "rmsnorm" and not cfg.post_norm and cfg.final_norm
            and not cfg.bias and cfg.attn_scale == 1.0 and not cfg.embed_scale and not cfg.embed_norm
            and not cfg.logits_bias and not (cfg.gated and cfg.act == "gelu")):
        return "t5"
    if (cfg.pos == "learned" and cfg.pos_offset == 2 and cfg.norm == "layernorm" and cfg.post_norm
            and not cfg.final_norm and cfg.bias and cfg.embed_norm and not cfg.gated and not cfg.scale_logits
            and cfg.attn_scale is None and cfg.head_dim * cfg.n_head == cfg.d_model and cfg.norm_eps == 1e-5):
        return "bart"
    raise LmlabError(f"no Hugging Face architecture matches this encoder-decoder (pos={cfg.pos}, "
                     f"norm={cfg.norm}, post_norm={cfg.post_norm}); export supports T5 (t5-* presets) and "
                     "BART (bart-* presets); the transformer-* presets (sinusoidal positions) have no "
                     "Hugging Face counterpart")


def _weight_map(cfg: EncDecConfig, kind: str) -> list[tuple[str, list[str]]]:
    """Return ``(our key, [HF keys])`` pairs: our tensor is the HF tensors concatenated on dim 0."""
    pairs: list[tuple[str, list[str]]] = []
    if kind == "t5":
        for side in ("encoder", "decoder"):
            pairs.append((f"{side}.rel.weight",
                          [f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]))
            pairs.append((f"{side}.norm.weight", [f"{side}.final_layer_norm.weight"]))
            for i in range(cfg.n_layer if side == "encoder" else cfg.n_dec_layer):
                p, q = f"{side}.block.{i}.layer.", f"{side}.blocks.{i}."
                ff = 1 if side == "encoder" else 2
                pairs += [(q + "norm1.weight", [p + "0.layer_norm.weight"]),
                          (q + "attn.qkv.weight", [p + f"0.SelfAttention.{n}.weight" for n in "qkv"]),
                          (q + "attn.proj.weight", [p + "0.SelfAttention.o.weight"]),
                          (q + "norm2.weight", [p + f"{ff}.layer_norm.weight"]),
                          (q + ("mlp.w2.weight" if cfg.gated else "mlp.proj.weight"),
                           [p + f"{ff}.DenseReluDense.wo.weight"])]
                if cfg.gated:
                    pairs.append((q + "mlp.w13.weight",
                                  [p + f"{ff}.DenseReluDense.wi_{j}.weight" for j in (0, 1)]))
                else:
                    pairs.append((q + "mlp.fc.weight", [p + f"{ff}.DenseReluDense.wi.weight"]))
                if side == "decoder":
                    pairs += [(q + "norm_cross.weight", [p + "1.layer_norm.weight"]),
                              (q + "cross_attn.q.weight", [p + "1.EncDecAttention.q.weight"]),
                              (q + "cross_attn.kv.weight",
                               [p + f"1.EncDecAttention.{n}.weight" for n in "kv"]),
                              (q + "cross_attn.proj.weight", [p + "1.EncDecAttention.o.weight"])]
        return pairs
    parts = ("weight", "bias")
    for side in ("encoder", "decoder"):
        m = f"model.{side}."
        pairs.append((f"{side}.pos.weight", [m + "embed_positions.weight"]))
        pairs += [(f"{side}.emb_norm.{x}", [m + f"layernorm_embedding.{x}"]) for x in parts]
        for i in range(cfg.n_layer if side == "encoder" else cfg.n_dec_layer):
            p, q = f"{m}layers.{i}.", f"{side}.blocks.{i}."
            for x in parts:
                pairs += [(q + f"attn.qkv.{x}", [p + f"self_attn.{n}_proj.{x}" for n in "qkv"]),
                          (q + f"attn.proj.{x}", [p + f"self_attn.out_proj.{x}"]),
                          (q + f"norm1.{x}", [p + f"self_attn_layer_norm.{x}"]),
                          (q + f"mlp.fc.{x}", [p + f"fc1.{x}"]), (q + f"mlp.proj.{x}", [p + f"fc2.{x}"]),
                          (q + f"norm2.{x}", [p + f"final_layer_norm.{x}"])]
                if side == "decoder":
                    pairs += [(q + f"cross_attn.q.{x}", [p + f"encoder_attn.q_proj.{x}"]),
                              (q + f"cross_attn.kv.{x}", [p + f"encoder_attn.{n}_proj.{x}" for n in "kv"]),
                              (q + f"cross_attn.proj.{x}", [p + f"encoder_attn.out_proj.{x}"]),
                              (q + f"norm_cross.{x}", [p + f"encoder_attn_layer_norm.{x}"])]
    return pairs


def _shared_key(kind: str) -> tuple[str, ...]:
    """HF names of the shared embedding, the preferred one first (the others are tied copies)."""
    if kind == "t5":
        return ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
    return ("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")


def _head_is_tied(kind: str, state: dict[str, torch.Tensor]) -> bool:
    head = state.get("lm_head.weight")
    shared = next((state[k] for k in _shared_key(kind) if k in state), None)
    return head is None or (shared is not None and head.shape == shared.shape and torch.equal(head, shared))


def state_from_hf(cfg: EncDecConfig, kind: str, state: dict[str, torch.Tensor],
                  src: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return our state dict for the Hugging Face tensors ``state`` of a ``kind`` (t5/bart) model."""
    state = dict(state)
    out: dict[str, torch.Tensor] = {}
    shared = next((k for k in _shared_key(kind) if k in state), None)
    if shared is None:
        raise LmlabError(f"{src} lacks the shared embedding {_shared_key(kind)[0]!r}; re-save the checkpoint")
    out["tok_emb.weight"] = state[shared]
    for k in _shared_key(kind):
        state.pop(k, None)
    for ours, theirs in _weight_map(cfg, kind):
        missing = [t for t in theirs if t not in state]
        if missing:
            raise LmlabError(f"{src} lacks weight {missing[0]!r}; the checkpoint does not match its "
                             "config.json")
        out[ours] = torch.cat([state.pop(t) for t in theirs], dim=0)
    head = state.pop("lm_head.weight", None)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = head
    if kind == "bart":
        bias = state.pop("final_logits_bias", None)
        zeros = torch.zeros(cfg.vocab_size, dtype=out["tok_emb.weight"].dtype)
        out["final_logits_bias"] = zeros if bias is None else bias.reshape(-1)
    # HF ignores a relative bias stored for the cross-attention (old checkpoints)
    state.pop("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight", None)
    if state:
        raise LmlabError(f"{src} has weights this conversion does not know ({', '.join(sorted(state)[:3])}); "
                         f"the architecture differs from plain {ARCHITECTURES[kind]}")
    return out


def load_hf_encdec(src: str | os.PathLike, dtype: torch.dtype | None = None) -> EncoderDecoder:
    """Return an :class:`EncoderDecoder` holding the weights of the T5 or BART folder ``src`` (in the
    stored dtype unless ``dtype`` is given), in eval mode on the CPU."""
    hf = read_hf_config(src)
    kind = hf.get("model_type")
    weights = read_hf_weights(src)
    cfg = config_from_hf(hf, _head_is_tied(kind, weights))
    state = state_from_hf(cfg, kind, weights, str(src))
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    model = EncoderDecoder(cfg)
    check_shapes(state, model.state_dict(), src)
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["tok_emb.weight"]
    model.load_state_dict(state)
    model.to(dtype=next(iter(state.values())).dtype)
    return model.eval()


def config_to_hf(cfg: EncDecConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Return the Hugging Face ``config.json`` dict of ``cfg`` (T5 or BART)."""
    kind = hf_family(cfg)
    common = {"architectures": [ARCHITECTURES[kind]], "model_type": kind, "vocab_size": cfg.vocab_size,
              "d_model": cfg.d_model, "is_encoder_decoder": True, "tie_word_embeddings": cfg.tie_embeddings,
              "pad_token_id": cfg.pad_token_id, "eos_token_id": cfg.eos_token_id,
              "decoder_start_token_id": cfg.decoder_start_token_id, "use_cache": True,
              "dtype": _DTYPE_NAMES.get(dtype, "float32")}
    names = {v: k for k, v in _ACTS.items() if k != "gelu_pytorch_tanh"}
    if kind == "t5":
        proj = "gated-gelu" if cfg.gated else names[cfg.act]
        return {**common, "d_kv": cfg.head_dim, "d_ff": cfg.d_ff, "num_layers": cfg.n_layer,
                "num_decoder_layers": cfg.n_dec_layer, "num_heads": cfg.n_head,
                "relative_attention_num_buckets": cfg.rel_buckets,
                "relative_attention_max_distance": cfg.rel_max_distance, "dropout_rate": cfg.dropout,
                "layer_norm_epsilon": cfg.norm_eps, "feed_forward_proj": proj,
                "scale_decoder_outputs": cfg.scale_logits, "n_positions": cfg.block_size,
                "initializer_factor": 1.0}
    return {**common, "encoder_layers": cfg.n_layer, "decoder_layers": cfg.n_dec_layer,
            "encoder_attention_heads": cfg.n_head, "decoder_attention_heads": cfg.n_head,
            "encoder_ffn_dim": cfg.d_ff, "decoder_ffn_dim": cfg.d_ff, "activation_function": names[cfg.act],
            "max_position_embeddings": cfg.block_size, "scale_embedding": cfg.embed_scale,
            "dropout": cfg.dropout, "attention_dropout": 0.0, "activation_dropout": 0.0,
            "init_std": cfg.init_std, "bos_token_id": cfg.bos_token_id, "forced_eos_token_id": None}


def state_to_hf(model: EncoderDecoder) -> dict[str, torch.Tensor]:
    """Return the Hugging Face state dict of ``model`` (a tied head left out, as HF saves it)."""
    cfg = model.config
    kind = hf_family(cfg)
    ours = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    out = {_shared_key(kind)[0]: ours["tok_emb.weight"]}
    for key, theirs in _weight_map(cfg, kind):
        for name, part in zip(theirs, ours[key].chunk(len(theirs), dim=0)):
            out[name] = part
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = ours["lm_head.weight"]
    if kind == "bart":
        bias = ours.get("final_logits_bias")
        out["final_logits_bias"] = (torch.zeros(cfg.vocab_size, dtype=out[_shared_key(kind)[0]].dtype)
                                    if bias is None else bias).reshape(1, -1)
    return {k: v.contiguous().clone() for k, v in out.items()}


def _special_tokens(cfg: EncDecConfig, tokenizer: Any) -> dict[str, Any]:
    """Return the HF special tokens of an lmlab tokenizer for ``cfg``: eos/pad/bos by the config's ids,
    unk and mask by name, T5 sentinels (``<extra_id_N>``) as additional special tokens."""
    found: dict[str, Any] = {}
    for role, idx in (("eos_token", cfg.eos_token_id), ("pad_token", cfg.pad_token_id),
                      ("bos_token", cfg.bos_token_id)):
        tok = tokenizer.id_to_token(idx) if idx is not None else None
        if tok is not None:
            found[role] = tok
    for role, names in _SPECIAL_NAMES.items():
        name = next((n for n in names if tokenizer.token_to_id(n) is not None), None)
        if name is not None:
            found[role] = name
    sentinels = []
    while tokenizer.token_to_id(f"<extra_id_{len(sentinels)}>") is not None:
        sentinels.append(f"<extra_id_{len(sentinels)}>")
    if sentinels:
        found["additional_special_tokens"] = sentinels
    return found


def export_hf_encdec(model: EncoderDecoder, out: str | os.PathLike,
                     tokenizer_dir: str | os.PathLike | None = None,
                     dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` as a Hugging Face folder ``out`` that ``AutoModelForSeq2SeqLM`` and, when
    ``tokenizer_dir`` holds a ``tokenizer.json``, ``AutoTokenizer`` load: config.json,
    model.safetensors, generation_config.json and the tokenizer files. Returns ``out``."""
    from safetensors.torch import save_file

    cfg = model.config
    hf_family(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = state_to_hf(model)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    tok_src = Path(tokenizer_dir) if tokenizer_dir is not None else None
    if tok_src is not None and (tok_src / "tokenizer.json").is_file():
        from lmlab.data.tokenizers import load_tokenizer

        src_cfg = _read_json(tok_src / "tokenizer_config.json")
        if src_cfg:  # imported from Hugging Face: keep its own special tokens
            names = ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token",
                     "additional_special_tokens")
            specials = {k: (_token_str(src_cfg[k]) if k != "additional_special_tokens" else src_cfg[k])
                        for k in names if src_cfg.get(k)}
        else:
            specials = _special_tokens(cfg, load_tokenizer(tok_src / "tokenizer.json"))
        with atomic_path(out / "tokenizer.json") as tmp:
            shutil.copyfile(tok_src / "tokenizer.json", tmp)
        write_json(out / "tokenizer_config.json", {
            **(src_cfg or {}), "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": cfg.block_size, "clean_up_tokenization_spaces": False, **specials})
        write_json(out / "special_tokens_map.json", specials)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_json(out / "config.json", config_to_hf(cfg, next(iter(state.values())).dtype))
    gen_src = _read_json(tok_src / "generation_config.json") if tok_src is not None else None
    ids = {"decoder_start_token_id": cfg.decoder_start_token_id, "eos_token_id": cfg.eos_token_id,
           "pad_token_id": cfg.pad_token_id, "bos_token_id": cfg.bos_token_id}
    write_json(out / "generation_config.json", gen_src or {k: v for k, v in ids.items() if v is not None})
    return out
