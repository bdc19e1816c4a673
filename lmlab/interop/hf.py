"""Convert Hugging Face ``LlamaForCausalLM`` and ``GPT2LMHeadModel`` checkpoints to and from
:class:`~lmlab.models.Decoder`, reading and writing the files directly (``config.json`` +
safetensors or ``pytorch_model.bin``), so ``transformers`` is not needed.

Weight mapping (ours <- HF):
- LLaMA: ``attn.qkv = cat(q_proj, k_proj, v_proj)``, ``mlp.w13 = cat(gate_proj, up_proj)``,
  ``mlp.w2 = down_proj``; the RoPE pairing is HF's rotate-half, the same as ours.
- GPT-2: HF stores ``c_attn``, ``c_proj``, ``c_fc`` and ``mlp.c_proj`` as Conv1D
  (input-first), so they are transposed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmlab.errors import LmlabError
from lmlab.fileio import atomic_path, write_json
from lmlab.models.decoder import Decoder, DecoderConfig
from lmlab.models.io import load_state

SUPPORTED = ("llama", "gpt2")
# config.json keys without which a model's shape is unknown (whole numbers, at least 1)
REQUIRED_KEYS = {
    "llama": ("vocab_size", "num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size"),
    "gpt2": ("vocab_size", "n_layer", "n_head", "n_embd"),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def read_hf_config(src: str | os.PathLike) -> dict[str, Any]:
    """Return the parsed ``config.json`` of a Hugging Face model folder."""
    path = Path(src) / "config.json"
    if not path.is_file():
        raise LmlabError(f"no config.json in {src}; give a Hugging Face model folder "
                         "(saved with save_pretrained)")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmlabError(f"{path} is not valid JSON ({e}); re-download or re-save the model") from None
    if not isinstance(hf, dict):
        raise LmlabError(f"{path} must hold a JSON object of settings; re-download or re-save the model")
    return hf


def _check_required(hf: dict[str, Any], kind: str) -> None:
    """Raise LmlabError naming the shape keys of a ``kind`` config.json that are missing or not counts."""
    missing = [k for k in REQUIRED_KEYS[kind] if k not in hf]
    if missing:
        raise LmlabError(f"config.json of this {kind} model lacks {', '.join(missing)}; add "
                         f"{'it' if len(missing) == 1 else 'them'} (see the model card) or re-save the "
                         "model with save_pretrained")
    for k in REQUIRED_KEYS[kind]:
        if isinstance(hf[k], bool) or not isinstance(hf[k], int) or hf[k] < 1:
            raise LmlabError(f"config.json of this {kind} model has {k}={hf[k]!r}; it must be a whole "
                             "number of at least 1; fix config.json or re-save the model")


def read_hf_weights(src: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Return all tensors of a Hugging Face model folder: ``model.safetensors``, sharded
    safetensors (``model.safetensors.index.json``), or ``pytorch_model.bin`` (loaded with
    ``weights_only=True``), sharded or not."""
    from safetensors.torch import load_file

    src = Path(src)
    files: list[Path] = []
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (src / single).is_file():
            files = [src / single]
        elif (src / index).is_file():
            weight_map = json.loads((src / index).read_text(encoding="utf-8")).get("weight_map", {})
            files = [src / name for name in sorted(set(weight_map.values()))]
        if files:
            break
    if not files:
        raise LmlabError(f"no weights in {src}; expected model.safetensors or pytorch_model.bin")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            if f.suffix == ".safetensors":
                state.update(load_file(str(f)))
            else:
                state.update(torch.load(f, map_location="cpu", weights_only=True))
        except FileNotFoundError:
            raise LmlabError(f"weight shard {f} is missing; re-download the model") from None
        except Exception as e:
            raise LmlabError(f"{f} is damaged or unreadable ({e}); "
                             "re-download or re-save the model") from None
    return state


def rope_from_hf(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """Return ``(theta, scaling)`` from either ``rope_parameters`` (transformers 5) or the
    legacy ``rope_theta`` + ``rope_scaling`` keys."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = dict(hf.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = {k: v for k, v in (params or legacy).items()
               if k not in ("rope_theta", "partial_rotary_factor")}
    if "type" in scaling and "rope_type" not in scaling:
        scaling["rope_type"] = scaling.pop("type")
    if scaling.get("rope_type", "default") == "default":
        return theta, None
    return theta, scaling


def config_from_hf(hf: dict[str, Any]) -> DecoderConfig:
    """Return the :class:`DecoderConfig` equivalent to a Hugging Face ``config.json`` dict."""
    kind = hf.get("model_type")
    if kind in REQUIRED_KEYS:
        _check_required(hf, kind)
    if kind == "llama":
        if hf.get("hidden_act", "silu") != "silu":
            raise LmlabError(f"LLaMA with hidden_act={hf['hidden_act']!r} is not supported; only silu is")
        if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
            raise LmlabError("LLaMA with attention_bias != mlp_bias is not supported; both must be equal")
        partial = (hf.get("rope_parameters") or {}).get("partial_rotary_factor",
                                                         hf.get("partial_rotary_factor", 1.0))
        if float(partial) != 1.0:
            raise LmlabError("partial rotary embeddings are not supported; only partial_rotary_factor=1")
        theta, scaling = rope_from_hf(hf)
        n_head = hf["num_attention_heads"]
        return DecoderConfig(
            vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 2048),
            n_layer=hf["num_hidden_layers"], n_head=n_head,
            n_kv_heads=hf.get("num_key_value_heads") or n_head,
            d_model=hf["hidden_size"], d_ff=hf["intermediate_size"],
            head_dim=hf.get("head_dim") or hf["hidden_size"] // n_head, norm="rmsnorm",
            norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu", pos="rope", rope_theta=theta,
            rope_scaling=scaling, bias=bool(hf.get("attention_bias", False)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            init_std=hf.get("initializer_range", 0.02))
    if kind == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        approx = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}.get(act)
        if approx is None:
            raise LmlabError(f"GPT-2 with activation_function={act!r} is not supported; use gelu_new or gelu")
        if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
            raise LmlabError("GPT-2 with non-standard attention scaling is not supported")
        if hf.get("add_cross_attention", False):
            raise LmlabError("GPT-2 with cross-attention is not a decoder-only model; it cannot be imported")
        d = hf["n_embd"]
        return DecoderConfig(
            vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", 1024), n_layer=hf["n_layer"],
            n_head=hf["n_head"], d_model=d, d_ff=hf.get("n_inner") or 4 * d, norm="layernorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp="gelu", gelu_approx=approx, pos="learned",
            bias=True, tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            init_std=hf.get("initializer_range", 0.02))
    raise LmlabError(f"model_type {kind!r} cannot be converted; supported: {', '.join(SUPPORTED)} "
                     "(LlamaForCausalLM, GPT2LMHeadModel), t5, bart (T5ForConditionalGeneration, "
                     "BartForConditionalGeneration)")


def check_shapes(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], src: Any) -> None:
    """Raise LmlabError naming the first converted weight whose shape differs from the model's
    (``expected``: the state dict of the model that ``config.json`` describes)."""
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise LmlabError(f"weight {k} of {src} has shape {tuple(state[k].shape)}, its config.json implies "
                         f"{tuple(expected[k].shape)}; the checkpoint is damaged or does not match it")


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def _take(state: dict[str, torch.Tensor], key: str, src: str) -> torch.Tensor:
    if key not in state:
        raise LmlabError(f"{src} lacks weight {key!r}; the checkpoint does not match its config.json")
    return state.pop(key)


def state_from_hf(hf: dict[str, Any], state: dict[str, torch.Tensor], cfg: DecoderConfig,
                  src: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return our state dict for Hugging Face tensors ``state`` (``hf`` is the config.json dict)."""
    state = dict(state)
    out: dict[str, torch.Tensor] = {}
    head = state.pop("lm_head.weight", None)
    if hf["model_type"] == "llama":
        state = _strip(state, "model.")
        out["tok_emb.weight"] = _take(state, "embed_tokens.weight", src)
        for i in range(cfg.n_layer):
            p, q = f"layers.{i}.", f"blocks.{i}."
            out[q + "norm1.weight"] = _take(state, p + "input_layernorm.weight", src)
            out[q + "norm2.weight"] = _take(state, p + "post_attention_layernorm.weight", src)
            for part in ("weight", "bias") if cfg.bias else ("weight",):
                out[q + f"attn.qkv.{part}"] = torch.cat(
                    [_take(state, p + f"self_attn.{n}_proj.{part}", src) for n in "qkv"], dim=0)
                out[q + f"attn.proj.{part}"] = _take(state, p + f"self_attn.o_proj.{part}", src)
                out[q + f"mlp.w13.{part}"] = torch.cat(
                    [_take(state, p + f"mlp.{n}_proj.{part}", src) for n in ("gate", "up")], dim=0)
                out[q + f"mlp.w2.{part}"] = _take(state, p + f"mlp.down_proj.{part}", src)
        out["norm_f.weight"] = _take(state, "norm.weight", src)
        state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    else:
        state = _strip(state, "transformer.")
        out["tok_emb.weight"] = _take(state, "wte.weight", src)
        out["pos_emb.weight"] = _take(state, "wpe.weight", src)
        for i in range(cfg.n_layer):
            p, q = f"h.{i}.", f"blocks.{i}."
            for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
                out[q + f"{ours}.weight"] = _take(state, p + f"{theirs}.weight", src)
                out[q + f"{ours}.bias"] = _take(state, p + f"{theirs}.bias", src)
            for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                                 ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
                out[q + f"{ours}.weight"] = _take(state, p + f"{theirs}.weight", src).t().contiguous()
                out[q + f"{ours}.bias"] = _take(state, p + f"{theirs}.bias", src)
            state.pop(p + "attn.bias", None)  # causal-mask buffers of old checkpoints
            state.pop(p + "attn.masked_bias", None)
        out["norm_f.weight"] = _take(state, "ln_f.weight", src)
        out["norm_f.bias"] = _take(state, "ln_f.bias", src)
    if not cfg.tie_embeddings:
        if head is None:
            raise LmlabError(f"{src} lacks lm_head.weight but its config says the head is untied; "
                             "re-save the checkpoint")
        out["lm_head.weight"] = head
    if state:
        raise LmlabError(f"{src} has weights this conversion does not know ({', '.join(sorted(state)[:3])}); "
                         "the architecture differs from plain LLaMA/GPT-2")
    return out


def load_hf(src: str | os.PathLike, dtype: torch.dtype | None = None,
            convert: tuple[Callable, Callable] | None = None) -> Decoder:
    """Return a :class:`Decoder` holding the weights of the Hugging Face model folder ``src``
    (in the stored dtype unless ``dtype`` is given), in eval mode on the CPU. ``convert``:
    another family's ``(config_from_hf, state_from_hf)`` (default: LLaMA/GPT-2's)."""
    to_config, to_state = convert or (config_from_hf, state_from_hf)
    hf = read_hf_config(src)
    cfg = to_config(hf)
    state = to_state(hf, read_hf_weights(src), cfg, str(src))
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    with torch.device("meta"):
        model = Decoder(cfg)
    load_state(model, state, src)
    return model.eval()


def hf_family(cfg: DecoderConfig) -> str:
    """Return ``'llama'`` or ``'gpt2'``: the Hugging Face architecture equal to ``cfg``, or raise."""
    if cfg.attn != "mha":
        raise LmlabError(f"this decoder has attn={cfg.attn}, which no Hugging Face LLaMA or GPT-2 has; "
                         "MLA models export as DeepseekV3ForCausalLM (lmlab export hf)")
    if getattr(cfg, "block_positions", False):
        raise LmlabError("this decoder has GLM block positions (trained with --objective blank-infilling), "
                         "which no Hugging Face LLaMA or GPT-2 has; it cannot be exported")
    if cfg.norm == "rmsnorm" and cfg.mlp == "swiglu" and cfg.pos == "rope":
        return "llama"
    if (cfg.norm == "layernorm" and cfg.mlp == "gelu" and cfg.pos == "learned" and cfg.bias
            and cfg.n_kv_heads == cfg.n_head and cfg.head_dim * cfg.n_head == cfg.d_model):
        return "gpt2"
    raise LmlabError(f"no Hugging Face architecture matches this model (norm={cfg.norm}, mlp={cfg.mlp}, "
                     f"pos={cfg.pos}, bias={cfg.bias}); export supports LLaMA (rmsnorm+swiglu+rope) and "
                     "GPT-2 (layernorm+gelu+learned+bias, MHA)")


def config_to_hf(cfg: DecoderConfig, dtype: torch.dtype = torch.float32, bos_id: int | None = None,
                 eos_id: int | None = None, pad_id: int | None = None) -> dict[str, Any]:
    """Return the Hugging Face ``config.json`` dict for ``cfg`` (LLaMA or GPT-2)."""
    common = {"vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": bos_id,
              "eos_token_id": eos_id, "pad_token_id": pad_id, "initializer_range": cfg.init_std,
              "torch_dtype": _DTYPE_NAMES.get(dtype, "float32"), "use_cache": True}
    if hf_family(cfg) == "llama":
        scaling = dict(cfg.rope_scaling) if cfg.rope_scaling else None
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": cfg.d_model,
                "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.n_layer,
                "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_heads,
                "head_dim": cfg.head_dim, "hidden_act": "silu", "max_position_embeddings": cfg.block_size,
                "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta, "rope_scaling": scaling,
                "attention_bias": cfg.bias, "mlp_bias": cfg.bias, "attention_dropout": 0.0, **common}
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": cfg.d_model,
            "n_inner": cfg.d_ff, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_positions": cfg.block_size,
            "n_ctx": cfg.block_size, "layer_norm_epsilon": cfg.norm_eps,
            "activation_function": "gelu_new" if cfg.gelu_approx == "tanh" else "gelu",
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
            "scale_attn_weights": True, **common}


def state_to_hf(model: Decoder) -> dict[str, torch.Tensor]:
    """Return the Hugging Face state dict of ``model`` (tied head left out, as HF saves it)."""
    cfg = model.config
    ours = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    if hf_family(cfg) == "llama":
        out["model.embed_tokens.weight"] = ours["tok_emb.weight"]
        sizes = [cfg.n_head * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim]
        for i in range(cfg.n_layer):
            p, q = f"model.layers.{i}.", f"blocks.{i}."
            out[p + "input_layernorm.weight"] = ours[q + "norm1.weight"]
            out[p + "post_attention_layernorm.weight"] = ours[q + "norm2.weight"]
            for part in ("weight", "bias") if cfg.bias else ("weight",):
                for n, t in zip("qkv", ours[q + f"attn.qkv.{part}"].split(sizes, dim=0)):
                    out[p + f"self_attn.{n}_proj.{part}"] = t
                out[p + f"self_attn.o_proj.{part}"] = ours[q + f"attn.proj.{part}"]
                gate, up = ours[q + f"mlp.w13.{part}"].chunk(2, dim=0)
                out[p + f"mlp.gate_proj.{part}"], out[p + f"mlp.up_proj.{part}"] = gate, up
                out[p + f"mlp.down_proj.{part}"] = ours[q + f"mlp.w2.{part}"]
        out["model.norm.weight"] = ours["norm_f.weight"]
    else:
        out["transformer.wte.weight"] = ours["tok_emb.weight"]
        out["transformer.wpe.weight"] = ours["pos_emb.weight"]
        for i in range(cfg.n_layer):
            p, q = f"transformer.h.{i}.", f"blocks.{i}."
            for ours_name, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
                out[p + f"{theirs}.weight"] = ours[q + f"{ours_name}.weight"]
                out[p + f"{theirs}.bias"] = ours[q + f"{ours_name}.bias"]
            for ours_name, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                                      ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
                out[p + f"{theirs}.weight"] = ours[q + f"{ours_name}.weight"].t()
                out[p + f"{theirs}.bias"] = ours[q + f"{ours_name}.bias"]
        out["transformer.ln_f.weight"] = ours["norm_f.weight"]
        out["transformer.ln_f.bias"] = ours["norm_f.bias"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = ours["lm_head.weight"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def _special_tokens(tokenizer: Any) -> dict[str, str]:
    """Return the HF special-token names of an lmlab tokenizer (bos/eos = end-of-text, pad, unk)."""
    from lmlab.data.tokenizers import EOT, PAD, UNK

    hf = tokenizer.hf if hasattr(tokenizer, "hf") else tokenizer
    found: dict[str, str] = {}
    if hf.token_to_id(EOT) is not None:
        found.update(bos_token=EOT, eos_token=EOT)
    if hf.token_to_id(PAD) is not None:
        found["pad_token"] = PAD
    if hf.token_to_id(UNK) is not None:
        found["unk_token"] = UNK
    return found


def export_hf(model: Decoder, out: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None,
              dtype: torch.dtype | None = None, state: dict[str, torch.Tensor] | None = None,
              make_config: Callable[..., dict[str, Any]] | None = None) -> Path:
    """Write ``model`` as a Hugging Face folder ``out`` that ``AutoModelForCausalLM`` and, when
    ``tokenizer_dir`` holds a ``tokenizer.json``, ``AutoTokenizer`` load: config.json,
    model.safetensors, generation_config.json and the tokenizer files. Returns ``out``.

    ``state`` and ``make_config`` (called as :func:`config_to_hf` is) convert another Hugging Face
    family (:mod:`lmlab.interop.hf_deepseek`); by default LLaMA or GPT-2."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if state is None:
        hf_family(model.config)
        state = state_to_hf(model)
    make_config = make_config or config_to_hf
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    dtype = next(iter(state.values())).dtype
    specials: dict[str, str] = {}
    ids: dict[str, int | None] = {"bos": None, "eos": None, "pad": None}
    tok_src = Path(tokenizer_dir) if tokenizer_dir is not None else None
    if tok_src is not None and (tok_src / "tokenizer.json").is_file():
        from lmlab.data.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(tok_src / "tokenizer.json")
        src_cfg = _read_json(tok_src / "tokenizer_config.json")
        if src_cfg:  # imported from Hugging Face: keep its own special tokens
            names = ("bos_token", "eos_token", "pad_token", "unk_token")
            specials = {k: _token_str(src_cfg[k]) for k in names if src_cfg.get(k)}
        else:
            specials = _special_tokens(tokenizer)
        for name in ids:
            tok = specials.get(f"{name}_token")
            ids[name] = tokenizer.token_to_id(tok) if tok else None
        with atomic_path(out / "tokenizer.json") as tmp:
            shutil.copyfile(tok_src / "tokenizer.json", tmp)
        from lmlab.data.chat import CHAT_TEMPLATE, has_chat_tokens

        chat = {"chat_template": CHAT_TEMPLATE} if not src_cfg and has_chat_tokens(tokenizer) else {}
        write_json(out / "tokenizer_config.json", {
            **(src_cfg or {}), "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": model.config.block_size, "clean_up_tokenization_spaces": False, **specials,
            **chat})
        write_json(out / "special_tokens_map.json", specials)
    gen_src = _read_json(tok_src / "generation_config.json") if tok_src is not None else None
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_json(out / "config.json", make_config(model.config, dtype, ids["bos"], ids["eos"], ids["pad"]))
    write_json(out / "generation_config.json", gen_src or {
        k: v for k, v in {"bos_token_id": ids["bos"], "eos_token_id": ids["eos"],
                          "pad_token_id": ids["pad"]}.items() if v is not None})
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise LmlabError(f"{path} is not valid JSON; fix or delete it") from None


def _token_str(value: Any) -> str:
    """Return the token text of a tokenizer_config special-token entry (a string or an AddedToken dict)."""
    return value["content"] if isinstance(value, dict) else str(value)


def copy_tokenizer_files(src: str | os.PathLike, out: str | os.PathLike) -> list[str]:
    """Copy the tokenizer and generation files of a Hugging Face folder into ``out``; return their names."""
    copied = []
    for name in (*TOKENIZER_FILES, "generation_config.json"):
        if (Path(src) / name).is_file():
            with atomic_path(Path(out) / name) as tmp:
                shutil.copyfile(Path(src) / name, tmp)
            copied.append(name)
    return copied
