"""GLM's autoregressive blank infilling (Du et al. 2022) as training examples.

Spans of Poisson(3) lengths covering 15% of a window are blanked. Part A is the window with
each span replaced by one mask token; part B holds the spans in a random order, each
preceded by a start token (sop) and predicted token by token, the last one predicting an end
token (eop). Positions are 2-D: the first is the token's position in part A (for part B, that
of its span's mask), the second is 0 in part A and 1, 2, ... within each span of part B.
Part A attends to all of part A (bidirectional); part B attends to part A and to the tokens
of part B up to itself (causal). The sequence is padded to ``block_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lmlab.data import masking
from lmlab.data.special import SpecialIds
from lmlab.errors import LmlabError


@dataclass
class BlankInfillingExamples:
    """GLM examples: ``input_ids``, ``labels``, ``position_ids``, ``block_position_ids`` (all of
    ``block_size``) and ``attention_mask`` (``block_size`` x ``block_size``, True = may attend)."""

    ids: SpecialIds
    block_size: int
    ratio: float = 0.15
    lam: float = 3.0

    def __post_init__(self) -> None:
        self.ids.require("blank-infilling", ("mask", "sop", "eop", "pad"))
        # Each span adds two tokens (its mask in A, its sop in B): leave room for twice the spans
        # expected over a whole block; in the rare window that draws more, the last span takes the rest.
        self.max_spans = max(1, math.ceil(2 * self.ratio * self.block_size / self.lam))
        self.window = self.block_size - 2 * self.max_spans
        if self.window < 2:
            raise LmlabError(f"blank-infilling needs --block-size 6 or more, got {self.block_size}")

    def spans(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw the blanked spans of a window: ``(starts, lengths)`` in text order."""
        total = max(1, int(round(self.ratio * self.window)))
        lengths = masking.poisson_span_lengths(total, rng, self.lam, max_spans=self.max_spans)
        return masking.place_spans(self.window, lengths, rng), lengths

    def __call__(self, tokens: np.ndarray, offset: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        seq = np.asarray(tokens[offset:offset + self.window], dtype=np.int64)
        starts, lengths = self.spans(rng)
        return self.build(seq, starts, lengths, rng.permutation(len(starts)))

    def build(self, seq: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
              order: np.ndarray) -> dict[str, np.ndarray]:
        """Lay out one example from its spans (``order``: the spans' order in part B)."""
        T, ids = self.block_size, self.ids
        part_a: list[np.ndarray] = []
        mask_at = np.zeros(len(starts), dtype=np.int64)  # position of each span's mask in part A
        pos = 0
        for k, (s, ln) in enumerate(zip(starts, lengths)):
            part_a.append(seq[pos:s])
            mask_at[k] = sum(len(p) for p in part_a)
            part_a.append(np.array([ids.mask]))
            pos = s + ln
        part_a.append(seq[pos:])
        a = np.concatenate(part_a).astype(np.int64)
        inputs, labels, position, block = [a], [np.full(len(a), masking.IGNORE)], [np.arange(len(a))], \
            [np.zeros(len(a), np.int64)]
        for k in order:
            span = seq[starts[k]:starts[k] + lengths[k]]
            inputs.append(np.concatenate([[ids.sop], span]))
            labels.append(np.concatenate([span, [ids.eop]]))
            position.append(np.full(len(span) + 1, mask_at[k]))
            block.append(np.arange(1, len(span) + 2))
        n = sum(len(x) for x in inputs)
        pad = T - n

        def padded(parts: list[np.ndarray], value: int) -> np.ndarray:
            return np.concatenate([*parts, np.full(pad, value)]).astype(np.int64)

        attend = np.zeros((T, T), dtype=bool)
        attend[:, :len(a)] = True  # everyone (padding too, so no row is empty) sees part A
        attend[len(a):n, len(a):n] = np.tri(n - len(a), dtype=bool)  # part B: causal within itself
        return {"input_ids": padded(inputs, ids.pad), "labels": padded(labels, masking.IGNORE),
                "position_ids": padded(position, 0), "block_position_ids": padded(block, 0),
                "attention_mask": attend}
