"""Sentence embeddings from an encoder (BERT, RoBERTa, sentence encoders such as all-MiniLM-L6-v2).

Each text is encoded with the tokenizer's own template (``[CLS] ... [SEP]``), the batch is
padded and run through the encoder with its attention mask, and the last layer's hidden
states are pooled: ``mean`` over the real tokens (sentence-transformers' default: the sum
of the masked states over the count of real tokens) or ``cls`` (the first token's state).
``normalize`` scales each vector to unit length, so dot products are cosine similarities,
as sentence-transformers' ``Normalize`` module does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from lmlab.errors import LmlabError
from lmlab.models.encoder import Encoder

Pooling = Literal["mean", "cls"]


@dataclass
class SentenceEmbeddings:
    """One vector per text: ``vectors`` is ``(N, d_model)``; ``tokens`` counts each text's tokens."""

    texts: list[str]
    vectors: torch.Tensor
    tokens: list[int]
    pooling: str
    normalize: bool

    def similarity(self) -> torch.Tensor:
        """Return the ``(N, N)`` cosine similarities of the vectors."""
        unit = torch.nn.functional.normalize(self.vectors.float(), dim=-1)
        return unit @ unit.T


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Return ``(B, d)`` vectors of hidden states ``(B, T, d)``: the mean over the tokens where
    ``attention_mask`` is 1 (``mean``), or the first token's state (``cls``)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling != "mean":
        raise LmlabError(f"pooling {pooling!r} is not one of mean, cls")
    mask = attention_mask.to(hidden.dtype)[..., None]
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


def _encode(tokenizer: Any, texts: list[str], limit: int, truncate: bool) -> list[list[int]]:
    """Token ids of each text with the tokenizer's template; too long raises unless ``truncate``."""
    hf = tokenizer.hf
    if truncate:
        hf.enable_truncation(limit)  # the template's special tokens are kept, as Hugging Face does
    try:
        ids = [e.ids for e in hf.encode_batch(texts, add_special_tokens=True)]
    finally:
        if truncate:
            hf.no_truncation()
    for n, row in enumerate(ids):
        if len(row) > limit:
            raise LmlabError(f"text {n + 1} is {len(row)} tokens long, the model takes at most {limit}; "
                             "shorten it or pass --truncate")
        if not row:
            raise LmlabError(f"text {n + 1} has no tokens; give some words")
    return ids


@torch.no_grad()
def sentence_embeddings(model: Encoder, tokenizer: Any, texts: list[str], pooling: str = "mean",
                        normalize: bool = False, batch_size: int = 32,
                        truncate: bool = False) -> SentenceEmbeddings:
    """Return the pooled encoder vectors of ``texts`` as :class:`SentenceEmbeddings`.

    ``pooling``: ``mean`` or ``cls``; ``normalize``: unit-length vectors; ``truncate``: cut
    texts longer than the model's positions instead of refusing them.
    """
    if not isinstance(model, Encoder):
        raise LmlabError(f"sentence embeddings need an encoder (BERT, RoBERTa), got a {type(model).__name__}")
    if not texts:
        raise LmlabError("no texts to embed; give --text or --file")
    if batch_size < 1:
        raise LmlabError(f"--batch-size must be at least 1, got {batch_size}")
    ids = _encode(tokenizer, texts, model.config.block_size, truncate)
    if max(max(row) for row in ids) >= model.config.vocab_size:
        raise LmlabError(f"the tokenizer gives ids beyond the model's vocabulary "
                         f"({model.config.vocab_size}); use the tokenizer the model was trained with")
    pad = model.config.pad_id if model.config.pad_id is not None else 0  # RoBERTa's positions skip pad_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for s in range(0, len(ids), batch_size):
            rows = ids[s:s + batch_size]
            width = max(len(r) for r in rows)
            x = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                x[i, :len(r)] = torch.tensor(r)
                mask[i, :len(r)] = 1
            x, mask = x.to(device), mask.to(device)
            out.append(pool(model.hidden_states(x, mask), mask, pooling).float().cpu())
    finally:
        model.train(was_training)
    vectors = torch.cat(out)
    if normalize:
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
    return SentenceEmbeddings(list(texts), vectors, [len(r) for r in ids], pooling, normalize)
