"""Convert Hugging Face ``DeepseekV3ForCausalLM`` checkpoints (dense layers only) to and from an MLA
:class:`~lmlab.models.Decoder` (``attn="mla"``), reading and writing the files directly.

Only dense models are converted: every layer must have the dense SwiGLU MLP
(``first_k_dense_replace`` equal to the layer count); a config with MoE layers is refused.
DeepSeek-V2/V3's attention is :class:`~lmlab.nn.mla.MultiHeadLatentAttention`.

Weight mapping (ours <- HF, per layer ``model.layers.i.``): ``attn.q`` <- ``self_attn.q_proj``, or
``attn.q_a``/``attn.q_norm``/``attn.q_b`` <- ``q_a_proj``/``q_a_layernorm``/``q_b_proj``;
``attn.kv_a`` <- ``kv_a_proj_with_mqa``, ``attn.kv_norm`` <- ``kv_a_layernorm``, ``attn.kv_b`` <-
``kv_b_proj``, ``attn.proj`` <- ``o_proj``; ``mlp.w13 = cat(gate_proj, up_proj)``, ``mlp.w2`` <-
``down_proj``; norms and embeddings as LLaMA's.

RoPE pairing: with ``rope_interleave`` (DeepSeek's default) HF pairs the rotary dimensions
``(0, 1), (2, 3), ...``; ours rotates halves ``(i, i + d/2)``. Rotating pair ``(2i, 2i+1)`` is
rotate-half's pair ``(i, i + d/2)`` once the dimensions are reordered evens-then-odds, so the
rows that produce ``q_R`` (each head's last ``qk_rope_head_dim`` rows of ``q_proj``/``q_b_proj``)
and ``k_R`` (the last rows of ``kv_a_proj_with_mqa``) are permuted that way on import, and back
on export. Without ``rope_interleave`` HF rotates halves and the weights are copied as they are.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from lmlab.errors import LmlabError
from lmlab.interop import hf
from lmlab.models.decoder import Decoder, DecoderConfig

MODEL_TYPES = ("deepseek_v3",)
ARCHITECTURE = "DeepseekV3ForCausalLM"
REQUIRED_KEYS = ("vocab_size", "num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size",
                 "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")


def _whole(hf_cfg: dict[str, Any], key: str, allow_none: bool = False) -> None:
    value = hf_cfg.get(key)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LmlabError(f"config.json of this DeepSeek model has {key}={value!r}; it must be a whole number "
                         "of at least 1; fix config.json or re-save the model")


def config_from_hf(hf_cfg: dict[str, Any]) -> DecoderConfig:
    """Return the MLA :class:`DecoderConfig` equal to a ``deepseek_v3`` ``config.json`` dict; raise
    LmlabError (one line naming the fix) for what the conversion does not cover: MoE layers,
    ``num_key_value_heads != num_attention_heads``, biases, activations other than SiLU, YaRN RoPE."""
    missing = [k for k in REQUIRED_KEYS if k not in hf_cfg]
    if missing:
        raise LmlabError(f"config.json of this DeepSeek model lacks {', '.join(missing)}; add them (see the "
                         "model card) or re-save the model with save_pretrained")
    for key in REQUIRED_KEYS:
        _whole(hf_cfg, key)
    _whole(hf_cfg, "q_lora_rank", allow_none=True)
    n_layer, n_head = hf_cfg["num_hidden_layers"], hf_cfg["num_attention_heads"]
    dense = hf_cfg.get("first_k_dense_replace", 3)  # HF's default when the key is absent
    if not isinstance(dense, int) or dense < n_layer:
        raise LmlabError(f"this DeepSeek model has MoE layers (first_k_dense_replace={dense} < "
                         f"num_hidden_layers={n_layer}); only dense models convert: set "
                         "first_k_dense_replace to the layer count (MoE is not supported)")
    n_kv = hf_cfg.get("num_key_value_heads") or n_head
    if n_kv != n_head:
        raise LmlabError(f"DeepSeek MLA has one key and value per query head; num_key_value_heads={n_kv} "
                         f"must equal num_attention_heads={n_head}; fix config.json")
    if hf_cfg.get("hidden_act", "silu") != "silu":
        raise LmlabError(f"DeepSeek with hidden_act={hf_cfg['hidden_act']!r} is not supported; only silu is")
    if hf_cfg.get("attention_bias", False):
        raise LmlabError("DeepSeek with attention_bias=true is not supported (the lab's biases cover the MLP "
                         "too); only attention_bias=false converts")
    theta, scaling = hf.rope_from_hf(hf_cfg)
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "yarn" or (scaling or {}).get("mscale_all_dim"):
        raise LmlabError("this DeepSeek model uses YaRN RoPE scaling (its long-context config), which is not "
                         "supported; set rope_scaling/rope_parameters to the default rope (shorter context)")
    n_nope, n_rope = hf_cfg["qk_nope_head_dim"], hf_cfg["qk_rope_head_dim"]
    return DecoderConfig(
        vocab_size=hf_cfg["vocab_size"], block_size=hf_cfg.get("max_position_embeddings", 4096),
        n_layer=n_layer, n_head=n_head, d_model=hf_cfg["hidden_size"], d_ff=hf_cfg["intermediate_size"],
        head_dim=n_nope,
        norm="rmsnorm", norm_eps=hf_cfg.get("rms_norm_eps", 1e-6), mlp="swiglu", pos="rope", rope_theta=theta,
        rope_scaling=scaling, bias=False, tie_embeddings=bool(hf_cfg.get("tie_word_embeddings", False)),
        init_std=hf_cfg.get("initializer_range", 0.02), attn="mla", q_lora_rank=hf_cfg.get("q_lora_rank"),
        kv_lora_rank=hf_cfg["kv_lora_rank"], qk_rope_head_dim=n_rope, qk_nope_head_dim=n_nope,
        v_head_dim=hf_cfg["v_head_dim"])


def rope_permutation(rope_dim: int) -> torch.Tensor:
    """Return the order (evens, then odds) that turns interleaved rotary rows into rotate-half rows:
    ``ours = theirs[perm]``; ``theirs = ours[argsort(perm)]``."""
    return torch.cat([torch.arange(0, rope_dim, 2), torch.arange(1, rope_dim, 2)])


def _permute_rope_rows(w: torch.Tensor, cfg: DecoderConfig, per_head: bool,
                       order: torch.Tensor) -> torch.Tensor:
    """Reorder the rotary rows of ``w``: the last ``d_h^R`` rows of each head's block (queries) or of
    the whole matrix (``kv_a``: ``[c_KV; k_R]``) by ``order``."""
    dr = cfg.qk_rope_head_dim
    if per_head:
        heads = w.reshape(cfg.n_head, cfg.qk_nope_head_dim + dr, *w.shape[1:])
        return torch.cat([heads[:, :-dr], heads[:, -dr:][:, order]], dim=1).reshape(w.shape)
    return torch.cat([w[:-dr], w[-dr:][order]], dim=0)


def _query_names(cfg: DecoderConfig) -> list[tuple[str, str]]:
    """``(ours, theirs)`` names of the query projections (the last one produces ``q_R``)."""
    if cfg.q_lora_rank is None:
        return [("attn.q", "self_attn.q_proj")]
    return [("attn.q_a", "self_attn.q_a_proj"), ("attn.q_norm", "self_attn.q_a_layernorm"),
            ("attn.q_b", "self_attn.q_b_proj")]


_KV_NAMES = [("attn.kv_a", "self_attn.kv_a_proj_with_mqa"), ("attn.kv_norm", "self_attn.kv_a_layernorm"),
             ("attn.kv_b", "self_attn.kv_b_proj"), ("attn.proj", "self_attn.o_proj"),
             ("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm"), ("mlp.w2", "mlp.down_proj")]


def state_from_hf(hf_cfg: dict[str, Any], state: dict[str, torch.Tensor], cfg: DecoderConfig,
                  src: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return our state dict for the ``DeepseekV3ForCausalLM`` tensors ``state``."""
    state = {k.removeprefix("model."): v for k, v in state.items()}
    take = hf._take
    interleave = bool(hf_cfg.get("rope_interleave", True))
    order = rope_permutation(cfg.qk_rope_head_dim)
    out = {"tok_emb.weight": take(state, "embed_tokens.weight", src),
           "norm_f.weight": take(state, "norm.weight", src)}
    head = state.pop("lm_head.weight", None)
    for i in range(cfg.n_layer):
        p, q = f"layers.{i}.", f"blocks.{i}."
        for ours, theirs in _query_names(cfg) + _KV_NAMES:
            out[q + ours + ".weight"] = take(state, p + theirs + ".weight", src)
        if interleave:
            q_rot = q + _query_names(cfg)[-1][0] + ".weight"
            out[q_rot] = _permute_rope_rows(out[q_rot], cfg, True, order)
            out[q + "attn.kv_a.weight"] = _permute_rope_rows(out[q + "attn.kv_a.weight"], cfg, False, order)
        out[q + "mlp.w13.weight"] = torch.cat([take(state, p + f"mlp.{n}_proj.weight", src)
                                               for n in ("gate", "up")], dim=0)
    if not cfg.tie_embeddings:
        if head is None:
            raise LmlabError(f"{src} lacks lm_head.weight but its config says the head is untied; "
                             "re-save the checkpoint")
        out["lm_head.weight"] = head
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    if state:
        raise LmlabError(f"{src} has weights this conversion does not know ({', '.join(sorted(state)[:3])}); "
                         "only dense DeepseekV3ForCausalLM checkpoints (no MoE, no MTP layers) convert")
    return out


def load_hf_deepseek(src: str | os.PathLike, dtype: torch.dtype | None = None) -> Decoder:
    """Return an MLA :class:`Decoder` holding the weights of the ``DeepseekV3ForCausalLM`` folder ``src``
    (stored dtype unless ``dtype``), in eval mode on the CPU."""
    return hf.load_hf(src, dtype, convert=(config_from_hf, state_from_hf))


def check_exportable(cfg: DecoderConfig) -> None:
    """Raise LmlabError when an MLA decoder has no ``DeepseekV3ForCausalLM`` equal."""
    if cfg.attn != "mla":
        raise LmlabError(f"only MLA decoders (attn=mla) export as {ARCHITECTURE}; this one has "
                         f"attn={cfg.attn}")
    if not (cfg.norm == "rmsnorm" and cfg.mlp == "swiglu" and not cfg.bias and not cfg.block_positions):
        raise LmlabError(f"no {ARCHITECTURE} matches this MLA model (norm={cfg.norm}, mlp={cfg.mlp}, "
                         f"bias={cfg.bias}); DeepSeek has rmsnorm, swiglu and no biases")


def config_to_hf(cfg: DecoderConfig, dtype: torch.dtype = torch.float32, bos_id: int | None = None,
                 eos_id: int | None = None, pad_id: int | None = None,
                 rope_interleave: bool = True) -> dict[str, Any]:
    """Return the ``config.json`` dict of a dense ``DeepseekV3ForCausalLM`` equal to ``cfg``."""
    check_exportable(cfg)
    return {"architectures": [ARCHITECTURE], "model_type": "deepseek_v3", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff, "moe_intermediate_size": cfg.d_ff,
            "num_hidden_layers": cfg.n_layer, "first_k_dense_replace": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_head,
            "q_lora_rank": cfg.q_lora_rank, "kv_lora_rank": cfg.kv_lora_rank,
            "qk_rope_head_dim": cfg.qk_rope_head_dim, "qk_nope_head_dim": cfg.qk_nope_head_dim,
            "v_head_dim": cfg.v_head_dim, "hidden_act": "silu", "max_position_embeddings": cfg.block_size,
            "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
            "rope_scaling": dict(cfg.rope_scaling) if cfg.rope_scaling else None,
            "rope_interleave": rope_interleave, "attention_bias": False, "attention_dropout": 0.0,
            "num_nextn_predict_layers": 0, "tie_word_embeddings": cfg.tie_embeddings,
            "initializer_range": cfg.init_std, "bos_token_id": bos_id, "eos_token_id": eos_id,
            "pad_token_id": pad_id, "torch_dtype": hf._DTYPE_NAMES.get(dtype, "float32"), "use_cache": True}


def state_to_hf(model: Decoder, rope_interleave: bool = True) -> dict[str, torch.Tensor]:
    """Return the ``DeepseekV3ForCausalLM`` state dict of an MLA ``model`` (tied head left out)."""
    cfg = model.config
    check_exportable(cfg)
    ours = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    back = torch.argsort(rope_permutation(cfg.qk_rope_head_dim))
    out = {"model.embed_tokens.weight": ours["tok_emb.weight"], "model.norm.weight": ours["norm_f.weight"]}
    for i in range(cfg.n_layer):
        p, q = f"model.layers.{i}.", f"blocks.{i}."
        for name, theirs in _query_names(cfg) + _KV_NAMES:
            out[p + theirs + ".weight"] = ours[q + name + ".weight"]
        if rope_interleave:
            q_rot = p + _query_names(cfg)[-1][1] + ".weight"
            out[q_rot] = _permute_rope_rows(out[q_rot], cfg, True, back)
            kv_a = p + "self_attn.kv_a_proj_with_mqa.weight"
            out[kv_a] = _permute_rope_rows(out[kv_a], cfg, False, back)
        gate, up = ours[q + "mlp.w13.weight"].chunk(2, dim=0)
        out[p + "mlp.gate_proj.weight"], out[p + "mlp.up_proj.weight"] = gate, up
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = ours["lm_head.weight"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def export_hf_deepseek(model: Decoder, out: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None,
                       dtype: torch.dtype | None = None, rope_interleave: bool = True) -> None:
    """Write an MLA ``model`` as a ``DeepseekV3ForCausalLM`` folder ``out`` (config.json,
    model.safetensors, generation_config.json and the tokenizer files of ``tokenizer_dir``)."""
    state = state_to_hf(model, rope_interleave)

    def make_config(cfg: DecoderConfig, dt: torch.dtype, bos: int | None, eos: int | None,
                    pad: int | None) -> dict[str, Any]:
        return config_to_hf(cfg, dt, bos, eos, pad, rope_interleave)

    hf.export_hf(model, out, tokenizer_dir, dtype, state=state, make_config=make_config)
