"""Fill-mask: the most likely tokens, with their probabilities, at each mask token of a text.

The text is encoded with the tokenizer's own template (``[CLS] ... [SEP]`` for BERT,
``<s> ... </s>`` for RoBERTa; lmlab tokenizers add nothing) and run through the encoder
once; each mask position gets the softmax of its MLM logits. The mask token is the
tokenizer's: ``[MASK]`` (BERT), ``<mask>`` (RoBERTa) or ``<|mask|>`` (lmlab's).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from lmlab.data.special import ROLE_NAMES, special_token
from lmlab.errors import LmlabError
from lmlab.models.encoder import Encoder


@dataclass
class Candidate:
    """One proposed token: its id, its vocabulary entry, its decoded text and its probability."""

    id: int
    token: str
    text: str
    prob: float


@dataclass
class MaskFill:
    """The candidates for one mask: ``index`` is the mask's position among the text's tokens."""

    index: int
    candidates: list[Candidate]

    def as_dict(self) -> dict[str, Any]:
        """Return the fill as a plain dict (JSON-ready)."""
        return asdict(self)


def mask_token(tokenizer: Any) -> tuple[str, int]:
    """Return ``(name, id)`` of the tokenizer's mask token; raise LmlabError when it has none."""
    found = special_token(tokenizer, "mask")
    if found is None:
        raise LmlabError(f"the tokenizer has no mask token ({' or '.join(ROLE_NAMES['mask'])}); use the "
                         "tokenizer of an encoder trained with the mlm objective")
    return found


def check_fill_mask_model(model: Any) -> Encoder:
    """Return ``model`` if it is an encoder with a masked-LM head; else raise LmlabError saying why."""
    if not isinstance(model, Encoder):
        raise LmlabError(f"fill-mask needs an encoder with a masked-LM head (BERT, RoBERTa); this model is a "
                         f"{type(model).__name__}: use 'lmlab generate' for decoders")
    model.require_mlm_head()
    return model


@torch.no_grad()
def fill_mask(model: Encoder, tokenizer: Any, text: str, top_k: int = 5) -> list[MaskFill]:
    """Return the ``top_k`` most likely tokens at each mask token of ``text``, in text order.

    Raises LmlabError for a model that is no encoder with an MLM head, a text without the
    tokenizer's mask token, or a text longer than the model's positions.
    """
    check_fill_mask_model(model)
    if top_k < 1:
        raise LmlabError(f"--top-k must be at least 1, got {top_k}")
    name, mask_id = mask_token(tokenizer)
    ids = tokenizer.hf.encode(text, add_special_tokens=True).ids
    where = [i for i, t in enumerate(ids) if t == mask_id]
    if not where:
        raise LmlabError(f"the text has no mask token; write {name} (this model's mask token) where a word "
                         f"is missing, e.g. --text \"The {name} of Denmark\"")
    limit = model.config.block_size
    if len(ids) > limit:
        raise LmlabError(f"the text is {len(ids)} tokens long, the model takes at most {limit}; "
                         "shorten --text")
    if max(ids) >= model.config.vocab_size:
        raise LmlabError(f"the tokenizer gives ids up to {max(ids)}, beyond the model's vocabulary "
                         f"({model.config.vocab_size}); use the tokenizer the model was trained with")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        hidden = model.hidden_states(torch.tensor([ids], device=device))
        probs = torch.softmax(model.mlm_logits(hidden[0, where]).float(), dim=-1)
    finally:
        model.train(was_training)
    top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    fills = []
    for index, p_row, i_row in zip(where, top.values.tolist(), top.indices.tolist()):
        fills.append(MaskFill(index, [Candidate(i, tokenizer.id_to_token(i) or "", tokenizer.hf.decode([i]),
                                                p) for p, i in zip(p_row, i_row)]))
    return fills
