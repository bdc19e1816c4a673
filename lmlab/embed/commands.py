"""CLI command ``lmlab embed``: contextual word embeddings from a trained ELMo biLM."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lmlab.config import arg
from lmlab.embed.contextual import LayerWeights
from lmlab.errors import LmlabError


@dataclass
class EmbedConfig:
    ckpt: Path | None = arg(None, "a trained ELMo: run folder or model.safetensors")
    text: str | None = arg(None, "the text to embed")
    tokenizer: Path | None = arg(None, "tokenizer.json to use (default: the one beside the model)")
    layer_weights: LayerWeights = arg(
        "mix", "mix: gamma * sum_j softmax(w)_j layer_j; top: the last biLSTM layer; all: every layer"
    )
    mix_weights: list[float] | None = arg(
        None, "raw scalar weights w_j for mix, one per layer, token layer first (default: equal weights)"
    )
    gamma: float = arg(1.0, "scale gamma of the mix")
    out: Path | None = arg(None, "write the vectors to this .safetensors file (tokens in its metadata)")
    json: bool = arg(False, "print the tokens and vectors as one JSON object")
    device: str = arg("cpu", "cpu, cuda, cuda:N or mps")


def embed(cfg: EmbedConfig) -> int:
    """Contextual embeddings of a text from a trained ELMo biLM (Peters et al. 2018).

    Prints one line per token (use --json for all numbers), or writes the vectors to
    --out as safetensors ("embeddings": (tokens, 2 d_model), or (layers, tokens, 2 d_model)
    for --layer-weights all; the tokens and mix weights in the metadata). Example:

      lmlab pretrain --model elmo-small --data data/shk --out runs/elmo --max-steps 500
      lmlab embed --ckpt runs/elmo --text "the bank of the river" --layer-weights mix --json
    """
    from lmlab.data.tokenizers import load_tokenizer
    from lmlab.device import resolve_device
    from lmlab.embed.contextual import contextual_embeddings, write_embeddings
    from lmlab.loader import load_model_any

    if cfg.ckpt is None or cfg.text is None:
        raise LmlabError("embed needs --ckpt RUN (a trained ELMo) and --text \"...\"")
    model = load_model_any(cfg.ckpt, resolve_device(cfg.device))
    ckpt = Path(cfg.ckpt)
    beside = (ckpt if ckpt.is_dir() else ckpt.parent) / "tokenizer.json"
    if cfg.tokenizer is None and not beside.is_file():
        raise LmlabError(f"no tokenizer.json beside {cfg.ckpt}; pass --tokenizer PATH")
    tokenizer = load_tokenizer(cfg.tokenizer if cfg.tokenizer is not None else beside)
    emb = contextual_embeddings(model, tokenizer, cfg.text, cfg.layer_weights, cfg.mix_weights or None,
                                cfg.gamma)
    shape = list(emb.vectors.shape)
    if cfg.out is not None:
        write_embeddings(emb, Path(cfg.out))
    if cfg.json:
        print(json.dumps({"tokens": emb.tokens, "ids": emb.ids, "layer_weights": emb.layer_weights,
                          "mix": emb.mix, "gamma": emb.gamma, "shape": shape,
                          "embeddings": emb.vectors.tolist()}))
    elif cfg.out is None:
        rows = emb.vectors if emb.vectors.dim() == 2 else emb.vectors[-1]
        for token, v in zip(emb.tokens, rows):
            head = ", ".join(f"{x:+.3f}" for x in v[:4].tolist())
            print(f"{token!r:>16}  [{head}, ...]  |v| {float(v.norm()):.3f}")
        print(f"{len(emb.tokens)} tokens, vectors of shape {shape} ({emb.layer_weights}); "
              "--json or --out for every number")
    else:
        print(f"wrote {shape} vectors of {len(emb.tokens)} tokens to {cfg.out}")
    return 0


