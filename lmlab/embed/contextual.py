"""Contextual word embeddings from a trained ELMo biLM.

The text is tokenized with the run's tokenizer; the biLM gives every token one vector
per layer (layer 0: the context-free token representation, then each biLSTM layer's
``[forward; backward]`` state), and these are returned mixed with softmax-normalised
scalar weights and a scale (ELMo's eq. 1), as the top layer, or all layers. With a
char-CNN ELMo a word the tokenizer does not know (``<unk>``) is embedded from its own
characters, so unseen words still get their own vectors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmlab.errors import LmlabError

LayerWeights = Literal["mix", "top", "all"]


@dataclass
class Embeddings:
    """Contextual vectors of one text: ``vectors`` is ``(T, D)``, or ``(n_layer + 1, T, D)`` for 'all'."""

    tokens: list[str]
    ids: list[int]
    vectors: Any  # torch.Tensor
    layer_weights: str
    mix: list[float] | None  # the softmax-normalised s_j used for 'mix'
    gamma: float | None


def _char_ids(model: Any, tokenizer: Any, ids: list[int], spans: list[str]) -> Any:
    """Character ids (1, T, max_chars) for a char-CNN ELMo: the vocabulary's characters for known
    ids, the text's own bytes for ``<unk>`` tokens."""
    import torch

    from lmlab.models.elmo import word_char_ids

    chars = model.chars_of(torch.tensor(ids, device=model.token_chars.device)).clone()
    unk = tokenizer.token_to_id("<unk>")
    for t, (i, span) in enumerate(zip(ids, spans)):
        if unk is not None and i == unk:
            chars[t] = torch.tensor(word_char_ids(span.encode("utf-8"), model.config.max_chars))
    return chars[None]


def contextual_embeddings(model: Any, tokenizer: Any, text: str, layer_weights: str = "mix",
                          mix_weights: list[float] | None = None, gamma: float = 1.0) -> Embeddings:
    """Return the ELMo vectors of ``text`` as :class:`Embeddings` (one vector per token, 2 d_model wide).

    ``layer_weights``: 'mix' (``gamma * sum_j softmax(mix_weights)_j layer_j``; equal
    weights when ``mix_weights`` is None), 'top' or 'all'.
    """
    import torch

    from lmlab.models.elmo import ELMo, ScalarMix

    if not isinstance(model, ELMo):
        raise LmlabError(f"embeddings need an ELMo biLM, got a {type(model).__name__}; "
                         "train one with 'lmlab pretrain --model elmo-small'")
    if layer_weights not in ("mix", "top", "all"):
        raise LmlabError(f"layer weights {layer_weights!r} is not one of mix, top, all")
    enc = tokenizer.hf.encode(text, add_special_tokens=False)
    if not enc.ids:
        raise LmlabError("the text has no tokens; give some words with --text")
    if max(enc.ids) >= model.config.vocab_size:
        raise LmlabError(f"the tokenizer gives ids up to {max(enc.ids)}, beyond the model's vocabulary "
                         f"({model.config.vocab_size}); use the tokenizer the model was trained with")
    spans = [text[s:e] for s, e in enc.offsets]
    device = next(model.parameters()).device
    ids = torch.tensor([enc.ids], device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if model.char_cnn is not None:
                layers = model.layers(chars=_char_ids(model, tokenizer, enc.ids, spans).to(device))
            else:
                layers = model.layers(ids)
            layers = layers[:, 0]  # (L+1, T, 2d)
            mix, g = None, None
            if layer_weights == "all":
                vectors = layers
            elif layer_weights == "top":
                vectors = layers[-1]
            else:
                scalar_mix = ScalarMix(layers.size(0), mix_weights or None, gamma).to(device)
                vectors = scalar_mix(layers)
                mix = torch.softmax(scalar_mix.weights, 0).tolist()
                g = float(gamma)
    finally:
        model.train(was_training)
    return Embeddings(spans, list(enc.ids), vectors.cpu(), layer_weights, mix, g)


def write_embeddings(emb: Embeddings, path: Path) -> None:
    from safetensors.torch import save_file

    from lmlab.fileio import atomic_path

    if path.suffix != ".safetensors":
        raise LmlabError(f"--out {path} must end in .safetensors")
    metadata = {"tokens": json.dumps(emb.tokens, ensure_ascii=False), "ids": json.dumps(emb.ids),
                "layer_weights": emb.layer_weights, "mix": json.dumps(emb.mix),
                "gamma": json.dumps(emb.gamma)}
    with atomic_path(path) as tmp:
        save_file({"embeddings": emb.vectors.contiguous()}, str(tmp), metadata=metadata)
