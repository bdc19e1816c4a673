"""LoRA adapters in PEFT's format, both ways: ``adapter_config.json`` + ``adapter_model.safetensors``
(keys ``base_model.model.<HF module>.lora_A.weight`` / ``lora_B.weight``), for the LLaMA and GPT-2
decoders that :mod:`lmlab.interop.hf` converts.

Module mapping (ours -> Hugging Face), per block ``i``:
- LLaMA: slices ``attn.q``/``attn.k``/``attn.v`` of ``attn.qkv`` -> ``self_attn.q_proj``/``k_proj``/
  ``v_proj``; ``attn.proj`` -> ``o_proj``; ``mlp.w1``/``mlp.w3`` of ``mlp.w13`` -> ``gate_proj``/
  ``up_proj``; ``mlp.w2`` -> ``down_proj``. A LoRA on a whole fused layer (``attn.qkv``) exports
  as one LoRA per projection sharing ``A``, each with its rows of ``B``: the same update.
- GPT-2: ``attn.qkv`` -> ``attn.c_attn`` (fused in both; slices export as one LoRA of their summed
  rank with a block-diagonal ``B``); ``attn.proj`` -> ``attn.c_proj``; ``mlp.fc`` -> ``mlp.c_fc``;
  ``mlp.proj`` -> ``mlp.c_proj``. PEFT's LoRA on a Conv1D (``fan_in_fan_out``) has the same
  ``A (r, in)`` and ``B (out, r)`` as on a Linear.
- ``lm_head`` -> ``lm_head``.
Ranks and scales may differ per module (``rank_pattern``/``alpha_pattern``, rsLoRA): each module's
own scale is folded into its ``B``, and smaller ranks are padded with zeros on import, so the
update ``scale * B A`` of every layer is the same number for number.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.fileio import atomic_path, write_json
from lmlab.interop.hf import hf_family
from lmlab.models.decoder import Decoder
from lmlab.tuning import TuningInfo, TuningOptions, apply_tuning, tuning_state
from lmlab.tuning.lora import lora_layers
from lmlab.tuning.targets import fused_slices

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
# (our layer within a block, slice) -> the Hugging Face module within a block
_LLAMA = {("attn.qkv", "q"): "self_attn.q_proj", ("attn.qkv", "k"): "self_attn.k_proj",
          ("attn.qkv", "v"): "self_attn.v_proj", ("attn.proj", "all"): "self_attn.o_proj",
          ("mlp.w13", "w1"): "mlp.gate_proj", ("mlp.w13", "w3"): "mlp.up_proj",
          ("mlp.w2", "all"): "mlp.down_proj"}
_GPT2 = {("attn.qkv", "all"): "attn.c_attn", ("attn.proj", "all"): "attn.c_proj",
         ("mlp.fc", "all"): "mlp.c_fc", ("mlp.proj", "all"): "mlp.c_proj"}
_BLOCK_PREFIX = {"llama": "model.layers.", "gpt2": "transformer.h."}


def _check_decoder(model: nn.Module) -> str:
    if not isinstance(model, Decoder):
        raise LmlabError("PEFT adapters convert for LLaMA and GPT-2 decoders; this is a "
                         f"{type(model).__name__}")
    return hf_family(model.config)


def _hf_name(family: str, layer: str, part: str) -> str | None:
    """Return the HF module of our ``layer`` (a module name) and slice ``part``, None when it has none."""
    if layer == "lm_head" and part == "all":
        return "lm_head"
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", layer)
    if m is None:
        return None
    hf = (_LLAMA if family == "llama" else _GPT2).get((m.group(2), part))
    return None if hf is None else f"{_BLOCK_PREFIX[family]}{m.group(1)}.{hf}"


def peft_modules(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """Return, per Hugging Face module, the LoRA ``(A (r, in), B (out, r), scale)`` equal to the LoRA
    of the LLaMA/GPT-2 ``model`` (see the module docstring for the mapping)."""
    family = _check_decoder(model)
    out: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for layer, lin in lora_layers(model):
        lora = lin.lora
        parts = [p for p, _, _ in lora.slices]
        if family == "gpt2" and layer.endswith("attn.qkv") and parts != ["all"]:
            # one fused c_attn: the slices side by side, B block-diagonal over the output rows
            a = torch.cat([lora.A[p] for p in parts])
            b = torch.zeros(lin.out_features, a.shape[0], dtype=a.dtype)
            for i, (p, start, stop) in enumerate(lora.slices):
                b[start:stop, i * lora.r:(i + 1) * lora.r] = lora.B[p]
            out[_hf_name(family, layer, "all")] = (a, b, lora.scale)
            continue
        if parts == ["all"] and family == "llama" and layer.endswith(("attn.qkv", "mlp.w13")):
            parent, _, child = layer.rpartition(".")
            for p, start, stop in fused_slices(model.get_submodule(parent), child, lin):
                out[_hf_name(family, layer, p)] = (lora.A["all"], lora.B["all"][start:stop], lora.scale)
            continue
        for p in parts:
            hf = _hf_name(family, layer, p)
            if hf is None:
                raise LmlabError(f"the LoRA on {layer} ({p}) has no counterpart in a Hugging Face {family} "
                                 "model; PEFT export covers the attention and MLP projections and lm_head")
            out[hf] = (lora.A[p], lora.B[p], lora.scale)
    return out


def export_peft(model: nn.Module, out: str | os.PathLike, base_name: str | None = None) -> Path:
    """Write the LoRA of ``model`` (a LLaMA/GPT-2 decoder with LoRA applied) as a PEFT adapter folder
    ``out`` that ``peft.PeftModel.from_pretrained`` loads onto the model's Hugging Face export
    (``lmlab export hf``). ``base_name``: recorded as ``base_model_name_or_path``. Returns ``out``."""
    from safetensors.torch import save_file

    state = tuning_state(model)
    if state is None or state.options.method != "lora":
        method = "no tuning" if state is None else f"{state.options.method} tuning"
        raise LmlabError(f"PEFT export takes a LoRA adapter; this model has {method}")
    if state.keep_trainable:
        raise LmlabError(f"the adapter also trains {', '.join(state.keep_trainable)} (kept trainable), which "
                         "a PEFT LoRA adapter cannot hold; export the merged model with 'lmlab export hf'")
    family = _check_decoder(model)
    opts = state.options
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for hf, (a, b, scale) in peft_modules(model).items():
        r = a.shape[0]
        theirs = opts.alpha / (math.sqrt(r) if opts.rslora else r)
        if r != opts.r:
            ranks[re.escape(hf)] = r
        tensors[f"{PREFIX}{hf}.lora_A.weight"] = a.detach().float().contiguous().clone()
        tensors[f"{PREFIX}{hf}.lora_B.weight"] = (b.detach().float() * (scale / theirs)).contiguous()
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name,
              "r": opts.r, "lora_alpha": opts.alpha, "lora_dropout": opts.dropout, "use_rslora": opts.rslora,
              "target_modules": sorted({k[len(PREFIX):].rsplit(".", 2)[0] for k in tensors}),
              "rank_pattern": ranks, "alpha_pattern": {}, "bias": "none", "fan_in_fan_out": family == "gpt2",
              "inference_mode": True, "init_lora_weights": True, "modules_to_save": None, "use_dora": False}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json(out / CONFIG, config)
    return out


def read_peft(src: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Return ``(adapter_config, tensors)`` of a PEFT adapter folder; raise LmlabError for what lmlab
    cannot represent (not LoRA, DoRA, biases, modules_to_save, embedding LoRA)."""
    src = Path(src)
    if not (src / CONFIG).is_file():
        raise LmlabError(f"no {CONFIG} in {src}; give a PEFT adapter folder (saved with save_pretrained)")
    try:
        cfg = json.loads((src / CONFIG).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmlabError(f"{src / CONFIG} is not valid JSON ({e}); save the adapter again") from None
    if cfg.get("peft_type") != "LORA":
        raise LmlabError(f"{src} holds a {cfg.get('peft_type')} adapter; lmlab imports LoRA adapters only")
    for key, ok, what in (("use_dora", False, "DoRA"), ("bias", "none", "trained biases"),
                          ("modules_to_save", None, "fully trained modules (modules_to_save)")):
        if cfg.get(key, ok) not in (ok, [], {}):
            raise LmlabError(f"{src} uses {what} ({key}={cfg[key]!r}), which lmlab's LoRA does not hold; "
                             "train the adapter without it")
    if (src / WEIGHTS).is_file():
        from safetensors.torch import load_file

        tensors = load_file(str(src / WEIGHTS))
    elif (src / "adapter_model.bin").is_file():
        tensors = torch.load(src / "adapter_model.bin", map_location="cpu", weights_only=True)
    else:
        raise LmlabError(f"no {WEIGHTS} (or adapter_model.bin) in {src}; the adapter is incomplete")
    odd = [k for k in tensors if not re.search(r"\.lora_[AB]\.weight$", k)]
    if odd:
        raise LmlabError(f"{src} holds weights lmlab's LoRA does not ({', '.join(odd[:3])}): embedding "
                         "LoRA or other tuned parts cannot be imported")
    return cfg, tensors


def _pattern_value(patterns: dict[str, Any], name: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key ``k`` with ``(.*\\.)?k$`` matching."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _our_target(family: str, hf: str) -> tuple[str, str]:
    """Return our ``(layer module, slice)`` for the Hugging Face module ``hf``."""
    for (layer, part), theirs in (_LLAMA if family == "llama" else _GPT2).items():
        m = re.fullmatch(re.escape(_BLOCK_PREFIX[family]) + r"(\d+)\." + re.escape(theirs), hf)
        if m:
            return f"blocks.{m.group(1)}.{layer}", part
    if hf == "lm_head":
        return "lm_head", "all"
    raise LmlabError(f"the PEFT adapter adapts {hf}, which has no counterpart in lmlab's {family} decoder; "
                     "adapters of the attention and MLP projections and lm_head import")


def import_peft(src: str | os.PathLike, model: nn.Module) -> TuningInfo:
    """Apply the PEFT LoRA adapter in ``src`` (trained on the Hugging Face LLaMA/GPT-2 equal to
    ``model``) to the untuned lmlab ``model``; return the :class:`TuningInfo`. Every layer gets the
    same update ``scale * B A`` as in PEFT (scales folded into ``B``, ranks padded to the largest)."""
    family = _check_decoder(model)
    if tuning_state(model) is not None:
        raise LmlabError("the model already has tuning applied; import the PEFT adapter onto the plain base")
    cfg, tensors = read_peft(src)
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        name = k[len(PREFIX):] if k.startswith(PREFIX) else k
        name = re.sub(r"\.lora_([AB])\.weight$", r".\1", name)
        hf, ab = name.rsplit(".", 1)
        modules.setdefault(hf, {})[ab] = v
    rslora = bool(cfg.get("use_rslora", False))
    plan: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for hf, ab in modules.items():
        if set(ab) != {"A", "B"}:
            raise LmlabError(f"{src} has lora_A or lora_B of {hf} but not both; the adapter is damaged")
        r = ab["A"].shape[0]
        rank = _pattern_value(cfg.get("rank_pattern"), hf, cfg.get("r", 8))
        alpha = _pattern_value(cfg.get("alpha_pattern"), hf, cfg.get("lora_alpha", 8))
        if r != rank:
            raise LmlabError(f"{src}: {hf}.lora_A has rank {r} but adapter_config.json says {rank}; the "
                             "adapter is damaged")
        scale = alpha / (math.sqrt(r) if rslora else r)
        plan[_our_target(family, hf)] = (ab["A"].float(), ab["B"].float() * scale)
    if not plan:
        raise LmlabError(f"{src} holds no LoRA weights")
    r_max = max(a.shape[0] for a, _ in plan.values())
    names = []
    for layer, part in plan:
        names.append(layer if part == "all" else f"{layer.rpartition('.')[0]}.{part}")
    targets = _compress(names, model.config.n_layer)
    opts = TuningOptions(method="lora", r=r_max, alpha=float(r_max),  # scale 1: each module's is in its B
                         dropout=float(cfg.get("lora_dropout", 0.0)), targets=targets)
    info = apply_tuning(model, opts)
    with torch.no_grad():
        for (layer, part), (a, b) in plan.items():
            lora = model.get_submodule(layer).lora
            theirs, ours = (b.shape[0], a.shape[1]), (lora.B[part].shape[0], lora.A[part].shape[1])
            if theirs != ours:
                raise LmlabError(f"the PEFT adapter's {layer} ({part}) is {theirs} (out, in), this base's is "
                                 f"{ours}; it was trained on a base of another shape")
            r = a.shape[0]
            lora.A[part].zero_()[:r].copy_(a)
            lora.B[part].zero_()[:, :r].copy_(b)  # scale 1 here: the PEFT scale is in b
    return info


def _compress(names: list[str], n_layer: int) -> list[str]:
    """Return target patterns for ``names``: ``attn.q`` for a name found in every block, the full
    name otherwise (so the targets select exactly these layers)."""
    groups: dict[str, list[str]] = {}
    for n in names:
        m = re.fullmatch(r"blocks\.\d+\.(.+)", n)
        groups.setdefault(m.group(1) if m else n, []).append(n)
    out = []
    for suffix, members in groups.items():
        every_block = len(members) == n_layer and members[0] != suffix
        out.extend([r"blocks\.\d+\." + re.escape(suffix)] if every_block else members)
    return sorted(out)
