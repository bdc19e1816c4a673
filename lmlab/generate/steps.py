"""The model-specific half of decoding: how each family reads prompts and appends tokens.

Transformer decoders use the KV cache their attention modules own, and a batch of prompts
is left-padded: padding gets no attention and real tokens keep the position ids they
would have alone. Recurrent LMs (RNN/LSTM/GRU) and ELMo's forward LM read each prompt
without padding and carry their state, one token a step; the NPLM reads the last
``context`` tokens. Either way every row decodes as if it ran by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.decoder import Decoder
from lmlab.models.elmo import ELMo
from lmlab.models.nplm import NPLM
from lmlab.models.rnn import RNNLM


def family(model: nn.Module) -> str:
    """Return how ``model`` decodes: 'decoder', 'recurrent', 'elmo' or 'nplm'; raise LmlabError otherwise."""
    for cls, name in ((Decoder, "decoder"), (RNNLM, "recurrent"), (ELMo, "elmo"), (NPLM, "nplm")):
        if isinstance(model, cls):
            return name
    raise LmlabError(f"a {type(model).__name__} cannot generate text; generation supports Transformer "
                     "decoders (GPT-2/LLaMA runs, Hugging Face folders), recurrent LMs (rnn/lstm/gru "
                     "presets), the NPLM and ELMo (its forward LM); load one of those")


def context_limit(model: nn.Module) -> int | None:
    """Return the most tokens ``model`` reads at once: a Transformer's ``block_size``, else None.

    Recurrent LMs, ELMo's forward LSTM and the NPLM have no limit: their ``block_size``
    is only the training window (the NPLM reads its last ``context`` tokens, whatever the length).
    """
    return model.config.block_size if family(model) == "decoder" else None


def fit_prompts(prompts: list[list[int]], max_new_tokens: int, block_size: int | None,
                 truncate: bool) -> list[list[int]]:
    """Check prompt + new tokens fit the context; with ``truncate`` keep each prompt's tail.

    ``block_size`` None means no context limit: prompts are kept whole.
    """
    if not prompts:
        raise LmlabError("no prompts given; pass at least one prompt")
    for p in prompts:
        if not p:
            raise LmlabError("a prompt is empty; give at least one token (e.g. the end-of-text id)")
    if block_size is None:
        return prompts
    room = block_size - max_new_tokens
    longest = max(len(p) for p in prompts)
    if longest <= room:
        return prompts
    if truncate and room >= 1:
        return [p[-room:] for p in prompts]
    raise LmlabError(f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                     f"block_size {block_size}; shorten the prompt, lower max_new_tokens, or set truncate "
                     "(--truncate) to keep the prompt's last block_size - max_new_tokens tokens")


# ---------------------------------------------------------------- model-specific steps
# Each ``*Steps`` object is the model-specific half of :func:`decode`: ``prefill()`` returns the
# next-token logits ``(B, V)`` after every prompt, ``step(nxt, i)`` appends token ``nxt (B,)`` to
# every row (step i = 0, 1, ...) and returns the logits after it. Rows decode independently:
# row r's logits equal those of the same prompt run alone.


class _DecoderSteps:
    """Transformer decoder: one left-padded batch with an attention mask and per-row position
    ids (padding is never attended), and the KV cache unless ``use_cache`` is False."""

    def __init__(self, model: nn.Module, prompts: list[list[int]], max_new_tokens: int, use_cache: bool,
                 device: torch.device):
        B, lens = len(prompts), [len(p) for p in prompts]
        self.model, self.T0 = model, max(lens)
        ids = torch.zeros(B, self.T0, dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, self.T0 - len(p):] = torch.tensor(p)
        self.seq = ids.to(device)
        self.padded = min(lens) != self.T0
        self.valid = self.prompt_pos = self.first_new_pos = None
        if self.padded:
            valid = torch.ones(B, self.T0 + max_new_tokens, dtype=torch.bool)
            for r, n in enumerate(lens):
                valid[r, : self.T0 - n] = False
            self.valid = valid.to(device)
            self.prompt_pos = (self.valid[:, :self.T0].long().cumsum(1) - 1).clamp(min=0)
            self.first_new_pos = torch.tensor(lens, device=device)
        self.cache = model.new_kv_cache(B, self.T0 + max_new_tokens) if use_cache else None

    def prefill(self) -> torch.Tensor:
        mask = self.valid[:, :self.T0] if self.padded else None
        return self.model(self.seq, kv_cache=self.cache, positions=self.prompt_pos, attention_mask=mask,
                          last_only=True)[:, -1]

    def step(self, nxt: torch.Tensor, step: int) -> torch.Tensor:
        L = self.T0 + step + 1
        mask = self.valid[:, :L] if self.padded else None
        if self.cache is not None:
            pos = (self.first_new_pos + step)[:, None] if self.padded else None
            return self.model(nxt[:, None], kv_cache=self.cache, positions=pos, attention_mask=mask)[:, -1]
        self.seq = torch.cat([self.seq, nxt[:, None]], dim=1)
        pos = (self.valid[:, :L].long().cumsum(1) - 1).clamp(min=0) if self.padded else None
        return self.model(self.seq, positions=pos, attention_mask=mask, last_only=True)[:, -1]


# A recurrent state: tensors with the batch along dim 1 (RNNLM's (h[, c]), ELMo's (h_1, c_1, ...)).
State = tuple[torch.Tensor, ...]


def _length_groups(prompts: list[list[int]], device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Group rows by prompt length: ``[(row indices (G,), ids (G, n)), ...]`` (no padding needed)."""
    groups: dict[int, list[int]] = {}
    for r, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(r)
    return [(torch.tensor(rows, device=device), torch.tensor([prompts[r] for r in rows], device=device))
            for rows in groups.values()]


def _gather_rows(parts: list[tuple[torch.Tensor, torch.Tensor]], dim: int) -> torch.Tensor:
    """Put each group's tensor (its rows along ``dim``) back into one tensor in row order."""
    if len(parts) == 1:  # one group holds every row, in order
        return parts[0][1]
    shape = list(parts[0][1].shape)
    shape[dim] = sum(len(rows) for rows, _ in parts)
    out = parts[0][1].new_empty(shape)
    for rows, t in parts:
        out.index_copy_(dim, rows, t)
    return out


class _StateSteps:
    """Recurrent LMs and ELMo's forward LM: the prompts of each length run together from a zero
    state, their final states are stacked into one batch (batch dim 1), then each step feeds one
    token per row and carries the state (the recurrent analogue of the KV cache). No row ever
    reads padding, which would change its state."""

    def __init__(self, forward_state: Callable[[torch.Tensor, Any], tuple[torch.Tensor, State]],
                 prompts: list[list[int]], device: torch.device):
        self.forward_state = forward_state
        self.groups = _length_groups(prompts, device)
        self.state: State = ()

    def prefill(self) -> torch.Tensor:
        runs = [(rows, *self.forward_state(ids, None)) for rows, ids in self.groups]
        self.state = tuple(_gather_rows([(rows, state[k]) for rows, _, state in runs], 1)
                           for k in range(len(runs[0][2])))
        return _gather_rows([(rows, logits[:, -1]) for rows, logits, _ in runs], 0)

    def step(self, nxt: torch.Tensor, step: int) -> torch.Tensor:  # noqa: ARG002 - shared signature
        logits, self.state = self.forward_state(nxt[:, None], self.state)
        return logits[:, -1]


class _WindowSteps:
    """NPLM: each step reads only the last ``context`` tokens of each row. Shorter rows are
    left-filled with the model's before-the-start id (``vocab_size``), exactly what it reads
    there on the whole sequence, so there is no limit on the length."""

    def __init__(self, model: nn.Module, prompts: list[list[int]], device: torch.device):
        n, pad = model.config.context, model.config.vocab_size
        window = torch.full((len(prompts), n), pad, dtype=torch.long)
        for r, p in enumerate(prompts):
            tail = p[-n:]
            window[r, n - len(tail):] = torch.tensor(tail)
        self.model, self.window = model, window.to(device)

    def prefill(self) -> torch.Tensor:
        return self.model(self.window)[:, -1]

    def step(self, nxt: torch.Tensor, step: int) -> torch.Tensor:  # noqa: ARG002 - shared signature
        self.window = torch.cat([self.window[:, 1:], nxt[:, None]], dim=1)
        return self.model(self.window)[:, -1]


class _RecomputeSteps:
    """Any causal LM called as ``model(ids) -> (B, T, V)``, without cache or state: every step
    rereads each row's whole sequence from scratch (a fresh zero state for recurrent LMs); rows
    of one length run together. Slow; the reference the other paths are tested against."""

    def __init__(self, model: nn.Module, prompts: list[list[int]], device: torch.device):
        self.model, self.groups = model, _length_groups(prompts, device)

    def _last_logits(self) -> torch.Tensor:
        return _gather_rows([(rows, self.model(ids)[:, -1]) for rows, ids in self.groups], 0)

    def prefill(self) -> torch.Tensor:
        return self._last_logits()

    def step(self, nxt: torch.Tensor, step: int) -> torch.Tensor:  # noqa: ARG002 - shared signature
        self.groups = [(rows, torch.cat([ids, nxt[rows][:, None]], dim=1)) for rows, ids in self.groups]
        return self._last_logits()


def steps_for(model: nn.Module, prompts: list[list[int]], max_new_tokens: int, use_cache: bool,
               device: torch.device) -> _DecoderSteps | _StateSteps | _WindowSteps | _RecomputeSteps:
    """Return the prefill/step strategy that decodes ``model``."""
    kind = family(model)
    if kind == "decoder":
        return _DecoderSteps(model, prompts, max_new_tokens, use_cache, device)
    if not use_cache:
        return _RecomputeSteps(model, prompts, device)
    if kind == "recurrent":
        return _StateSteps(lambda ids, state: model(ids, state, return_state=True), prompts, device)
    if kind == "elmo":
        return _StateSteps(model.forward_lm, prompts, device)
    return _WindowSteps(model, prompts, device)
