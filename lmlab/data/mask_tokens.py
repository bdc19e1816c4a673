"""The special tokens a masked-LM encoder uses, looked up by name in a tokenizer.

BERT's tokenizers call them ``[MASK]``, ``[CLS]``, ``[SEP]``, ``[PAD]``, ``[UNK]``; RoBERTa's
``<mask>``, ``<s>``, ``</s>``, ``<pad>``, ``<unk>``; lmlab's own tokenizers ``<|mask|>`` and
friends. A tokenizer imported from Hugging Face therefore works as it is.

The objectives' collators (branch h-objectives, ``lmlab.data.special``) look the same roles
up with the same names; when both are on main this module reduces to that one (``lmlab
fill-mask``, ``lmlab eval`` for encoders and the encoder export are its only users).
"""

from __future__ import annotations

from typing import Any

# Role -> the names it goes by, first match wins.
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "mask": ("[MASK]", "<mask>", "<|mask|>"),
    "cls": ("[CLS]", "<s>", "<|cls|>"),
    "sep": ("[SEP]", "</s>", "<|sep|>"),
    "pad": ("[PAD]", "<pad>", "<|pad|>"),
    "unk": ("[UNK]", "<unk>"),
}


def special_token(tokenizer: Any, role: str) -> tuple[str, int] | None:
    """Return ``(name, id)`` of the tokenizer's token for ``role`` (mask, cls, sep, pad, unk), or None."""
    for name in ROLE_NAMES[role]:
        i = tokenizer.token_to_id(name)
        if i is not None:
            return name, int(i)
    return None


def special_ids(tokenizer: Any) -> list[int]:
    """Return the sorted ids of every special (added) token: never masked, never a random replacement."""
    hf = tokenizer.hf if hasattr(tokenizer, "hf") else tokenizer
    return sorted(int(i) for i, tok in hf.get_added_tokens_decoder().items() if tok.special)
