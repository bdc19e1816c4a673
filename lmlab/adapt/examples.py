"""Labelled examples as model input: token ids per text, and right-padded batches of them.

:func:`encode_texts` turns texts into the ids a backbone family reads (a decoder's text ends
with its end-of-text token, whose state sums up the sequence; an encoder's is wrapped in
[CLS] ... [SEP] when the tokenizer has them). :class:`ExampleBatches` is the Trainer's batch
source for fine-tuning: shuffled epochs from a seed, with a resumable position.
:func:`pad_batch` makes one right-padded batch with its attention mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lmlab.data.special import special_token
from lmlab.errors import LmlabError


def encode_texts(tokenizer: Any, texts: Sequence[str], arch: str, max_len: int) -> list[list[int]]:
    """Return the ids of each text as the ``arch`` backbone (decoder, encoder, rnn) reads it, cut to
    ``max_len`` tokens (the end marker kept). Every sequence has at least one token."""
    if max_len < 2:
        raise LmlabError(f"--max-len must be at least 2 tokens (got {max_len})")
    ids = tokenizer.encode_batch(list(texts))
    out = []
    if arch == "encoder":
        cls, sep = special_token(tokenizer, "cls"), special_token(tokenizer, "sep")
        head = [cls[1]] if cls else []
        tail = [sep[1]] if sep else []
        room = max_len - len(head) - len(tail)
        out = [head + seq[:room] + tail for seq in ids]
    elif arch == "decoder" and tokenizer.eot_id is not None:
        out = [seq[:max_len - 1] + [tokenizer.eot_id] for seq in ids]
    else:
        out = [seq[:max_len] for seq in ids]
    fill = tokenizer.eot_id if tokenizer.eot_id is not None else 0
    return [seq or [fill] for seq in out]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(input_ids, attention_mask)``, both ``(B, longest)``, right-padded with ``pad_id``."""
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


class ExampleBatches:
    """Shuffled batches of ``(ids, target)`` examples, epoch after epoch, for the Trainer. A target
    is one number per example (a label, a rating) or a list of one per token (next-token ids, -100
    where nothing is learned), padded with -100.

    Epoch ``e`` visits the examples in a permutation drawn from ``seed + e``; a batch that runs
    past the end of an epoch continues into the next. ``state_dict()`` is the position (epoch,
    offset), so a resumed run sees the same batches as an uninterrupted one.
    """

    def __init__(self, ids: list[list[int]], targets: Sequence[float], batch_size: int, seed: int,
                 pad_id: int, device: torch.device, regression: bool = False):
        if not ids:
            raise LmlabError("no training examples to fine-tune on")
        if batch_size < 1:
            raise LmlabError(f"--batch-size must be at least 1 (got {batch_size})")
        self.ids, self.targets = ids, list(targets)
        self.batch_size, self.seed, self.pad_id = batch_size, seed, pad_id
        self.device, self.regression = device, regression
        self.epoch, self.offset = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(len(self.ids), generator=g).tolist()

    def next(self) -> dict[str, torch.Tensor]:
        """Return the next batch: ``input_ids``, ``attention_mask`` and ``labels`` on the device."""
        picked = []
        while len(picked) < self.batch_size:
            if self.offset >= len(self._order):
                self.epoch += 1
                self.offset = 0
                self._order = self._permutation(self.epoch)
            take = self._order[self.offset:self.offset + self.batch_size - len(picked)]
            picked += take
            self.offset += len(take)
        ids, mask = pad_batch([self.ids[i] for i in picked], self.pad_id)
        if isinstance(self.targets[0], (list, tuple)):  # a target per token (SFT), -100 on the padding
            labels = torch.full(ids.shape, -100, dtype=torch.long)
            for row, i in enumerate(picked):
                labels[row, :len(self.targets[i])] = torch.tensor(self.targets[i], dtype=torch.long)
        else:
            dtype = torch.float32 if self.regression else torch.long
            labels = torch.tensor([self.targets[i] for i in picked], dtype=dtype)
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device),
                "labels": labels.to(self.device)}

    def state_dict(self) -> dict[str, Any]:
        """Return the position: ``{"epoch", "offset"}``."""
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a position returned by :meth:`state_dict`."""
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._order = self._permutation(self.epoch)
