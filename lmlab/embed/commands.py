"""CLI command ``lmlab embed``: contextual word embeddings from a trained ELMo biLM, sentence
embeddings from an encoder (BERT, RoBERTa, all-MiniLM-L6-v2)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmlab.config import arg
from lmlab.embed.contextual import LayerWeights
from lmlab.errors import LmlabError


@dataclass
class EmbedConfig:
    ckpt: Path | None = arg(None, "a trained ELMo, or an encoder (BERT/RoBERTa run or Hugging Face folder)")
    text: str | None = arg(None, "the text to embed")
    file: Path | None = arg(None, "encoders: a file of texts, one per line, each embedded (and compared)")
    tokenizer: Path | None = arg(None, "tokenizer.json to use (default: the one beside the model)")
    pooling: Literal["mean", "cls"] = arg("mean", "encoders: mean of the real tokens' last hidden states, "
                                                    "or the first ([CLS]) token's")
    normalize: bool = arg(False, "encoders: scale each sentence vector to unit length "
                                 "(sentence-transformers)")
    truncate: bool = arg(False, "encoders: cut texts longer than the model's positions instead of refusing")
    layer_weights: LayerWeights = arg(
        "mix", "ELMo: mix: gamma * sum_j softmax(w)_j layer_j; top: the last biLSTM layer; all: every layer"
    )
    mix_weights: list[float] | None = arg(
        None, "raw scalar weights w_j for mix, one per layer, token layer first (default: equal weights)"
    )
    gamma: float = arg(1.0, "scale gamma of the mix")
    out: Path | None = arg(None, "write the vectors to this .safetensors file (tokens in its metadata)")
    json: bool = arg(False, "print the tokens and vectors as one JSON object")
    device: str = arg("cpu", "cpu, cuda, cuda:N or mps")


def embed(cfg: EmbedConfig) -> int:
    """Contextual embeddings of a text from a trained ELMo biLM (Peters et al. 2018), or sentence
    embeddings of texts from an encoder (BERT, RoBERTa, sentence encoders).

    ELMo: prints one line per token (use --json for all numbers), or writes the vectors to
    --out as safetensors ("embeddings": (tokens, 2 d_model), or (layers, tokens, 2 d_model)
    for --layer-weights all; the tokens and mix weights in the metadata).
    Encoders: one vector per text (--text, or --file with one text per line), pooled over the
    last layer (--pooling mean or cls, --normalize for unit length), and the texts' cosine
    similarities; --out writes "embeddings": (texts, d_model). Examples:

      lmlab pretrain --model elmo-small --data data/shk --out runs/elmo --max-steps 500
      lmlab embed --ckpt runs/elmo --text "the bank of the river" --layer-weights mix --json
      lmlab embed --ckpt runs/minilm --file sentences.txt --pooling mean --normalize
    """
    from lmlab.data.tokenizers import load_tokenizer
    from lmlab.device import resolve_device
    from lmlab.embed.contextual import contextual_embeddings, write_embeddings
    from lmlab.loader import load_model_any
    from lmlab.models.encoder import Encoder

    if cfg.ckpt is None or (cfg.text is None and cfg.file is None):
        raise LmlabError("embed needs --ckpt RUN (a trained ELMo or an encoder) and --text \"...\" "
                         "(or --file TEXTS for an encoder)")
    model = load_model_any(cfg.ckpt, resolve_device(cfg.device))
    ckpt = Path(cfg.ckpt)
    beside = (ckpt if ckpt.is_dir() else ckpt.parent) / "tokenizer.json"
    if cfg.tokenizer is None and not beside.is_file():
        raise LmlabError(f"no tokenizer.json beside {cfg.ckpt}; pass --tokenizer PATH")
    tokenizer = load_tokenizer(cfg.tokenizer if cfg.tokenizer is not None else beside)
    if isinstance(model, Encoder):
        return _embed_sentences(cfg, model, tokenizer)
    if cfg.file is not None:
        raise LmlabError("--file is for encoders (sentence embeddings); give an ELMo one --text")
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




def _texts(cfg: EmbedConfig) -> list[str]:
    """The texts to embed: --text, then each non-empty line of --file."""
    texts = [cfg.text] if cfg.text is not None else []
    if cfg.file is not None:
        if not Path(cfg.file).is_file():
            raise LmlabError(f"--file {cfg.file} does not exist; give a text file with one text per line")
        try:
            lines = Path(cfg.file).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise LmlabError(f"--file {cfg.file} is not UTF-8 text; re-save it as UTF-8") from None
        texts += [line for line in lines if line.strip()]
    return texts


def _embed_sentences(cfg: EmbedConfig, model, tokenizer) -> int:
    """Sentence embeddings of an encoder: print them (and their similarities), or write --out."""
    from lmlab.embed.sentence import sentence_embeddings
    from lmlab.fileio import atomic_path

    emb = sentence_embeddings(model, tokenizer, _texts(cfg), cfg.pooling, cfg.normalize,
                              truncate=cfg.truncate)
    sim = emb.similarity()
    if cfg.out is not None:
        from safetensors.torch import save_file

        if Path(cfg.out).suffix != ".safetensors":
            raise LmlabError(f"--out {cfg.out} must end in .safetensors")
        metadata = {"texts": json.dumps(emb.texts, ensure_ascii=False), "pooling": emb.pooling,
                    "normalize": json.dumps(emb.normalize)}
        with atomic_path(Path(cfg.out)) as tmp:
            save_file({"embeddings": emb.vectors.contiguous()}, str(tmp), metadata=metadata)
    if cfg.json:
        print(json.dumps({"texts": emb.texts, "tokens": emb.tokens, "pooling": emb.pooling,
                          "normalize": emb.normalize, "shape": list(emb.vectors.shape),
                          "embeddings": emb.vectors.tolist(), "similarity": sim.tolist()},
                         ensure_ascii=False))
        return 0
    if cfg.out is not None:
        print(f"wrote {list(emb.vectors.shape)} vectors of {len(emb.texts)} texts to {cfg.out}")
        return 0
    for n, (text, v) in enumerate(zip(emb.texts, emb.vectors), 1):
        head = ", ".join(f"{x:+.3f}" for x in v[:4].tolist())
        print(f"{n:>3}  [{head}, ...]  |v| {float(v.norm()):.3f}  {text[:60]}")
    if len(emb.texts) > 1:
        print("cosine similarity:")
        print("     " + "".join(f"{j:>7}" for j in range(1, len(emb.texts) + 1)))
        for i, row in enumerate(sim.tolist(), 1):
            print(f"{i:>3}  " + "".join(f"{x:7.3f}" for x in row))
    print(f"{len(emb.texts)} texts, vectors of {emb.vectors.shape[1]} ({emb.pooling} pooling"
          f"{', normalised' if emb.normalize else ''}); --json or --out for every number")
    return 0
