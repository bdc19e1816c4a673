"""The special tokens of the pretraining objectives, looked up by name in a tokenizer.

Each role (mask, cls, sep, ...) has the names the common tokenizers give it: BERT's
``[MASK]``/``[CLS]``/``[SEP]``/``[PAD]``, RoBERTa's and BART's ``<mask>``/``<s>``/``</s>``/
``<pad>``, T5's ``<extra_id_N>`` sentinels and ``</s>``, GLM's ``<|startofpiece|>``/
``<|endofpiece|>``, and lmlab's own ``<|...|>`` names. A tokenizer imported from Hugging
Face therefore works as it is; an lmlab tokenizer gets the missing ones from
``lmlab data prepare --mask-tokens``, which appends them at the end of the vocabulary so
that every existing id keeps its meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lmlab.data.tokenizers import Tokenizer
from lmlab.errors import LmlabError

# Role -> the names it goes by, first match wins.
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "mask": ("[MASK]", "<mask>", "<|mask|>"),
    "cls": ("[CLS]", "<s>", "<|cls|>"),
    "sep": ("[SEP]", "</s>", "<|sep|>"),
    "pad": ("[PAD]", "<pad>", "<|pad|>"),
    "eos": ("</s>", "<|endoftext|>", "[SEP]"),
    "bos": ("<s>",),
    "sop": ("<|sop|>", "<|startofpiece|>", "[sop]"),
    "eop": ("<|eop|>", "<|endofpiece|>", "[eop]"),
    "unk": ("[UNK]", "<unk>"),
}
# What --mask-tokens appends for a role the tokenizer lacks (bos stays optional: BART's <s>).
APPENDED = {"mask": "<|mask|>", "cls": "<|cls|>", "sep": "<|sep|>", "pad": "<|pad|>", "sop": "<|sop|>",
            "eop": "<|eop|>"}
N_SENTINELS = 100
FIX = ("prepare the data with 'lmlab data prepare --mask-tokens' (it appends them at the end of the "
       "new tokenizer's vocabulary), or use a tokenizer that has them")


def sentinel_name(i: int) -> str:
    """The name of T5's i-th sentinel token, ``<extra_id_i>``."""
    return f"<extra_id_{i}>"


@dataclass(frozen=True)
class SpecialIds:
    """The ids of the special tokens found in one tokenizer (None where it has none)."""

    mask: int | None
    cls: int | None
    sep: int | None
    pad: int | None
    eos: int | None
    bos: int | None
    sop: int | None
    eop: int | None
    unk: int | None
    sentinels: tuple[int, ...]
    specials: np.ndarray  # ids of every special (added) token: never masked, never a random replacement
    vocab_size: int

    def require(self, objective: str, roles: tuple[str, ...], sentinels: int = 0) -> None:
        """Raise LmlabError naming every token ``objective`` needs that the tokenizer lacks."""
        missing = [" or ".join(ROLE_NAMES[r]) for r in roles if getattr(self, r) is None]
        if sentinels > len(self.sentinels):
            missing.append(f"{sentinel_name(len(self.sentinels))}..{sentinel_name(sentinels - 1)} "
                           f"(T5 sentinels: {sentinels} needed, {len(self.sentinels)} found)")
        if missing:
            raise LmlabError(f"the tokenizer lacks special tokens the {objective} objective needs: "
                             f"{'; '.join(missing)}; {FIX}")


def special_token(tokenizer: Any, role: str) -> tuple[str, int] | None:
    """Return ``(name, id)`` of the tokenizer's token for ``role`` (a key of ROLE_NAMES), or None."""
    for name in ROLE_NAMES[role]:
        i = tokenizer.token_to_id(name)
        if i is not None:
            return name, int(i)
    return None


def special_ids(tokenizer: Any) -> list[int]:
    """Return the sorted ids of every special (added) token of an lmlab or ``tokenizers`` tokenizer."""
    hf = tokenizer.hf if hasattr(tokenizer, "hf") else tokenizer
    return sorted(int(i) for i, tok in hf.get_added_tokens_decoder().items() if tok.special)


def find_special_ids(tokenizer: Tokenizer) -> SpecialIds:
    """Look up every role's token and the T5 sentinels by name; return their ids."""
    def first(role: str) -> int | None:
        found = special_token(tokenizer, role)
        return None if found is None else found[1]

    sentinels = []
    while (i := tokenizer.token_to_id(sentinel_name(len(sentinels)))) is not None:
        sentinels.append(int(i))
    return SpecialIds(**{r: first(r) for r in ROLE_NAMES}, sentinels=tuple(sentinels),
                      specials=np.array(special_ids(tokenizer), dtype=np.int64),
                      vocab_size=tokenizer.vocab_size)


def add_objective_tokens(tokenizer: Tokenizer) -> list[str]:
    """Append the special tokens the objectives need and ``tokenizer`` lacks; return their names.

    They go at the end of the vocabulary (a mask, cls/sep, pad, sop/eop and T5's 100 sentinels
    ``<extra_id_0>``..``<extra_id_99>`` in that order), so every id the tokenizer had keeps its
    meaning.
    """
    have = find_special_ids(tokenizer)
    names = [APPENDED[r] for r in APPENDED if getattr(have, r) is None]
    names += [sentinel_name(i) for i in range(len(have.sentinels), N_SENTINELS)]
    if names:
        tokenizer.hf.add_special_tokens(names)
    return names


def sentence_end_ids(tokenizer: Tokenizer) -> np.ndarray:
    """Ids of the tokens that end a sentence: text ending in ``.``, ``!`` or ``?``, and the eos/eot token.

    Used to cut windows into sentences (BERT's sentence pairs, BART's sentence permutation).
    """
    n = tokenizer.vocab_size
    texts = tokenizer.hf.decode_batch([[i] for i in range(n)], skip_special_tokens=False)
    ends = [i for i, t in enumerate(texts) if t.rstrip().endswith((".", "!", "?"))]
    eos = find_special_ids(tokenizer).eos
    return np.array(sorted(set(ends) | ({eos} if eos is not None else set())), dtype=np.int64)
