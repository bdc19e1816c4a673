"""GGUF export: a LLaMA-family or GPT-2 run as one ``.gguf`` file that llama.cpp (and transformers'
GGUF loader) runs, written with the ``gguf`` package.

LLaMA weights go through the Hugging Face layout (:func:`lmlab.interop.hf.state_to_hf`) and are
renamed as llama.cpp's converter does (``token_embd``, ``blk.N.attn_q`` ... ``output``). The rows of Q and
K are permuted as that converter permutes Hugging Face checkpoints: HF's rotary embedding rotates
the two halves of each head, GGUF's pairs neighbouring dimensions, and transformers' loader undoes
the permutation, so its logits equal ours. 1-D tensors (norms) stay f32 at every ``dtype``, as
llama.cpp keeps them; ``q8_0`` quantises 2-D tensors whose rows are a multiple of 32 values and
stores the others in f16. The tokenizer goes in as GPT-2-style byte-level BPE (``tokenizer.ggml.
model = gpt2``: tokens, token types, merges, special ids) with the chat template, so only lmlab's
``bpe`` tokenizers (and imported byte-level BPE ones) export.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.errors import LmlabError
from lmlab.fileio import atomic_path

DTYPES = ("f32", "f16", "q8_0")
Q8_BLOCK = 32  # values per q8_0 block: a quantised row must hold a whole number of them
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def permute_rotary_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Return Q or K rows ``w (n_head * head_dim, ...)`` reordered from Hugging Face's half-split
    rotary pairing to GGUF's interleaved one (llama.cpp's ``LlamaModel.permute``)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def gguf_tensors(model: Any) -> tuple[str, dict[str, torch.Tensor]]:
    """Return ``(architecture, tensors)``: ``llama`` or ``gpt2`` and the GGUF-named fp32 tensors of
    ``model`` (see the module docstring). Raises LmlabError for a model neither can hold."""
    from lmlab.interop.hf import hf_family

    cfg = model.config
    if hf_family(cfg) == "gpt2":
        return "gpt2", _gpt2_tensors(model)
    if cfg.bias:
        raise LmlabError("GGUF export of a LLaMA with biases is not supported; llama.cpp's llama has none")
    if cfg.rope_scaling:
        raise LmlabError("GGUF export of a model with rope_scaling is not supported yet; export it with "
                         "'lmlab export hf'")
    return "llama", _llama_tensors(model)


def _llama_tensors(model: Any) -> dict[str, torch.Tensor]:
    from lmlab.interop.hf import state_to_hf

    cfg = model.config
    state = state_to_hf(model)
    out = {"token_embd.weight": state["model.embed_tokens.weight"],
           "output_norm.weight": state["model.norm.weight"]}
    if "lm_head.weight" in state:
        out["output.weight"] = state["lm_head.weight"]
    for i in range(cfg.n_layer):
        for hf_name, name in _LAYER_NAMES.items():
            t = state[f"model.layers.{i}.{hf_name}"]
            if name == "attn_q.weight":
                t = permute_rotary_rows(t, cfg.n_head)
            elif name == "attn_k.weight":
                t = permute_rotary_rows(t, cfg.n_kv_heads)
            out[f"blk.{i}.{name}"] = t
    return {k: v.float().contiguous() for k, v in out.items()}


def _gpt2_tensors(model: Any) -> dict[str, torch.Tensor]:
    """GPT-2 as llama.cpp's gpt2 reads it: our (out, in) weights are its rows as they are (Hugging
    Face's Conv1D stores them transposed, which its converter undoes)."""
    cfg = model.config
    if cfg.gelu_approx != "tanh":
        raise LmlabError("llama.cpp's gpt2 uses the tanh approximation of GELU; this model uses the exact "
                         "one, so its GGUF would compute something else")
    ours = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    out = {"token_embd.weight": ours["tok_emb.weight"], "position_embd.weight": ours["pos_emb.weight"],
           "output_norm.weight": ours["norm_f.weight"], "output_norm.bias": ours["norm_f.bias"]}
    if not cfg.tie_embeddings:
        out["output.weight"] = ours["lm_head.weight"]
    names = {"norm1": "attn_norm", "attn.qkv": "attn_qkv", "attn.proj": "attn_output", "norm2": "ffn_norm",
             "mlp.fc": "ffn_up", "mlp.proj": "ffn_down"}
    for i in range(cfg.n_layer):
        for ours_name, name in names.items():
            for part in ("weight", "bias"):
                out[f"blk.{i}.{name}.{part}"] = ours[f"blocks.{i}.{ours_name}.{part}"]
    return {k: v.float().contiguous() for k, v in out.items()}


def _tokenizer_fields(tokenizer: Any) -> tuple[list[str], list[int], list[str], dict[str, int]]:
    """Return the tokens (in id order), their GGUF token types, the BPE merges and the special ids."""
    from lmlab.data.tokenizers import EOT, PAD

    hf = tokenizer.hf if hasattr(tokenizer, "hf") else tokenizer
    spec = json.loads(hf.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise LmlabError("GGUF export needs a byte-level BPE tokenizer (lmlab's 'bpe' kind, as GPT-2's); "
                         "this model's is not one, which llama.cpp could not read")
    size = hf.get_vocab_size(with_added_tokens=True)
    vocab = hf.get_vocab(with_added_tokens=True)
    tokens = [""] * size
    for tok, idx in vocab.items():
        tokens[idx] = tok
    special = {a["id"] for a in spec.get("added_tokens", []) if a.get("special")}
    types = [3 if i in special else 1 for i in range(size)]  # gguf.TokenType: 3 control, 1 normal
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    ids = {name: hf.token_to_id(tok) for name, tok in (("eos", EOT), ("pad", PAD))}
    return tokens, types, merges, {k: v for k, v in ids.items() if v is not None}


def export_gguf(model: Any, tokenizer: Any, out: str | os.PathLike, dtype: str = "f32",
                name: str = "lmlab") -> Path:
    """Write ``model`` and ``tokenizer`` as the GGUF file ``out`` with tensors in ``dtype`` (f32,
    f16 or q8_0); return the path. The file appears only when complete."""
    import gguf

    from lmlab.data.chat import CHAT_TEMPLATE, has_chat_tokens

    if dtype not in DTYPES:
        raise LmlabError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    cfg = model.config
    arch, tensors = gguf_tensors(model)
    tokens, types, merges, ids = _tokenizer_fields(tokenizer)
    if len(tokens) > cfg.vocab_size:
        raise LmlabError(f"the tokenizer has {len(tokens)} tokens but the model's vocabulary is "
                         f"{cfg.vocab_size}; export the tokenizer the model was trained with")
    tokens += [f"[PAD{i}]" for i in range(len(tokens), cfg.vocab_size)]  # unused rows of a padded table
    types += [5] * (cfg.vocab_size - len(types))  # gguf.TokenType.UNUSED
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_name(name)
        w.add_context_length(cfg.block_size)
        w.add_embedding_length(cfg.d_model)
        w.add_block_count(cfg.n_layer)
        w.add_feed_forward_length(cfg.d_ff)
        w.add_head_count(cfg.n_head)
        if arch == "llama":
            w.add_head_count_kv(cfg.n_kv_heads)
            w.add_rope_freq_base(float(cfg.rope_theta))
            w.add_rope_dimension_count(cfg.head_dim)
            w.add_layer_norm_rms_eps(float(cfg.norm_eps))
            if cfg.head_dim * cfg.n_head != cfg.d_model:
                w.add_key_length(cfg.head_dim)
                w.add_value_length(cfg.head_dim)
        else:
            w.add_layer_norm_eps(float(cfg.norm_eps))
        w.add_vocab_size(cfg.vocab_size)
        w.add_file_type(file_type)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        if "eos" in ids:
            w.add_bos_token_id(ids["eos"])  # lmlab documents start with end-of-text
            w.add_eos_token_id(ids["eos"])
        if "pad" in ids:
            w.add_pad_token_id(ids["pad"])
        w.add_add_bos_token(False)
        if has_chat_tokens(tokenizer):
            w.add_chat_template(CHAT_TEMPLATE)
        for tname, t in tensors.items():
            _add_tensor(w, tname, t.numpy(), dtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out


def _add_tensor(writer: Any, name: str, data: np.ndarray, dtype: str) -> None:
    import gguf

    if data.ndim == 1 or dtype == "f32":
        writer.add_tensor(name, data.astype(np.float32))
    elif dtype == "q8_0" and data.shape[-1] % Q8_BLOCK == 0:
        q = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)  # q: the blocks' bytes
    else:  # f16, or a q8_0 row too short for whole blocks
        writer.add_tensor(name, data.astype(np.float16))
