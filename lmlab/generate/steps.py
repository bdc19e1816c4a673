"""The model-specific half of decoding: how each family reads prompts and appends tokens.

Transformer decoders use the KV cache their attention modules own, and a batch of prompts
is left-padded: padding gets no attention and real tokens keep the position ids they
would have alone. Recurrent LMs (RNN/LSTM/GRU) and ELMo's forward LM read each prompt
without padding and carry their state, one token a step; the NPLM reads the last
``context`` tokens. An encoder-decoder reads each prompt as a source: the encoder runs once,
the decoder starts from its start token with a self-attention KV cache and the cross-attention
keys/values computed once. Either way every row decodes as if it ran by itself.

Every strategy can also ``reorder(index)`` its rows (beam search, :mod:`lmlab.generate.beam`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.decoder import Decoder
from lmlab.models.elmo import ELMo
from lmlab.models.encdec import EncoderDecoder
from lmlab.models.encoder import Encoder
from lmlab.models.nplm import NPLM
from lmlab.models.rnn import RNNLM


def family(model: nn.Module) -> str:
    """Return how ``model`` decodes: 'decoder', 'encdec', 'recurrent', 'elmo' or 'nplm'; raise
    LmlabError otherwise."""
    for cls, name in ((Decoder, "decoder"), (EncoderDecoder, "encdec"), (RNNLM, "recurrent"), (ELMo, "elmo"),
                      (NPLM, "nplm")):
        if isinstance(model, cls):
            return name
    if isinstance(model, Encoder):
        raise LmlabError("an encoder (BERT/RoBERTa) predicts masked tokens rather than generating text; use "
                         "'lmlab fill-mask' (or 'lmlab embed' for sentence vectors)")
    raise LmlabError(f"a {type(model).__name__} cannot generate text; generation supports Transformer "
                     "decoders (GPT-2/LLaMA runs, Hugging Face folders), encoder-decoders (Transformer, "
                     "T5, BART), recurrent LMs (rnn/lstm/gru presets), the NPLM and ELMo (its forward LM); "
                     "load one of those")


def context_limit(model: nn.Module) -> int | None:
    """Return the most tokens ``model`` reads at once: a Transformer's ``block_size``, else None.

    Recurrent LMs, ELMo's forward LSTM and the NPLM have no limit: their ``block_size``
    is only the training window (the NPLM reads its last ``context`` tokens, whatever the length),
    and neither has an Infini-attention decoder (its memory holds any length in constant size).
    """
    if family(model) != "decoder" or getattr(model.config, "attn", "mha") == "infini":
        return None
    return model.config.block_size


def fit_model_prompts(model: nn.Module, prompts: list[list[int]], max_new_tokens: int,
                      truncate: bool) -> list[list[int]]:
    """Check ``prompts`` fit ``model``: a decoder's prompt + new tokens its context (:func:`fit_prompts`);
    an encoder-decoder's sources and new tokens its source and target positions (with ``truncate``
    a source keeps its first tokens). Returns the prompts as they will be read."""
    if family(model) != "encdec":
        return fit_prompts(prompts, max_new_tokens, context_limit(model), truncate)
    fit_prompts(prompts, max_new_tokens, None, truncate)  # no empty prompts
    limit = model.config.max_positions
    if limit is None:
        return prompts
    if max_new_tokens > limit:
        raise LmlabError(f"max_new_tokens ({max_new_tokens}) exceeds the model's {limit} target positions "
                         f"(block_size); lower max_new_tokens to at most {limit}")
    longest = max(len(p) for p in prompts)
    if longest <= limit:
        return prompts
    if truncate:
        return [p[:limit] for p in prompts]
    raise LmlabError(f"the source has {longest} tokens but the model has {limit} source positions "
                     f"(block_size); shorten the source, or set truncate (--truncate) to keep its first "
                     f"{limit} tokens")


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

    def reorder(self, index: torch.Tensor) -> None:
        self.seq = self.seq.index_select(0, index)
        if self.padded:
            self.valid = self.valid.index_select(0, index)
            self.first_new_pos = self.first_new_pos.index_select(0, index)
        if self.cache is not None:
            self.cache.reorder(index)

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


class _EncDecSteps:
    """Encoder-decoder: the sources are right-padded (padding masked) and encoded once; the decoder
    starts every row from ``decoder_start_token_id`` and appends one token a step with its
    self-attention KV cache and the cross-attention keys/values of the encoder output, projected
    once (:class:`~lmlab.nn.attention.CrossKVCache`). ``use_cache=False`` rereads the whole target
    every step (the reference). ``expand``: rows per source (beam search), the encoder still runs
    once per source."""

    def __init__(self, model: nn.Module, sources: list[list[int]], max_new_tokens: int, use_cache: bool,
                 device: torch.device, expand: int = 1):
        S = max(len(s) for s in sources)
        ids = torch.full((len(sources), S), model.config.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(sources), S, dtype=torch.long)
        for r, s in enumerate(sources):
            ids[r, :len(s)], mask[r, :len(s)] = torch.tensor(s), 1
        ids, mask = ids.to(device), mask.to(device)
        self.mask = mask if bool((mask == 0).any()) else None
        self.model = model
        self.memory = model.encode(ids, self.mask)
        if expand > 1:
            rows = torch.arange(len(sources), device=device).repeat_interleave(expand)
            self.memory = self.memory.index_select(0, rows)
            self.mask = None if self.mask is None else self.mask.index_select(0, rows)
        B = self.memory.shape[0]
        self.seq = torch.full((B, 1), model.config.decoder_start_token_id, dtype=torch.long, device=device)
        self.cache = self.cross = None
        if use_cache:
            self.cache, self.cross = model.new_kv_cache(B, max_new_tokens + 1), model.new_cross_cache()

    def prefill(self) -> torch.Tensor:
        if self.cache is None:
            return self.model.decode(self.seq, self.memory, self.mask, last_only=True)[:, -1]
        return self.model.decode_step(self.seq, self.memory, self.mask, self.cache, self.cross)

    def step(self, nxt: torch.Tensor, step: int) -> torch.Tensor:  # noqa: ARG002 - shared signature
        if self.cache is not None:
            return self.model.decode_step(nxt[:, None], self.memory, self.mask, self.cache, self.cross)
        self.seq = torch.cat([self.seq, nxt[:, None]], dim=1)
        return self.model.decode(self.seq, self.memory, self.mask, last_only=True)[:, -1]

    def reorder(self, index: torch.Tensor) -> None:
        self.memory, self.seq = self.memory.index_select(0, index), self.seq.index_select(0, index)
        self.mask = None if self.mask is None else self.mask.index_select(0, index)
        if self.cache is not None:
            self.cache.reorder(index)
            self.cross.reorder(index)


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

    def reorder(self, index: torch.Tensor) -> None:
        self.state = tuple(s.index_select(1, index) for s in self.state)


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

    def reorder(self, index: torch.Tensor) -> None:
        self.window = self.window.index_select(0, index)


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

    def reorder(self, index: torch.Tensor) -> None:
        # beam search reorders rows among the copies of one prompt, so each row stays in its length group
        groups = []
        for rows, ids in self.groups:
            where = torch.empty(len(index), dtype=torch.long, device=index.device)
            where[rows] = torch.arange(len(rows), device=index.device)
            groups.append((rows, ids.index_select(0, where[index[rows]])))
        self.groups = groups


def steps_for(model: nn.Module, prompts: list[list[int]], max_new_tokens: int, use_cache: bool,
              device: torch.device, expand: int = 1
              ) -> _DecoderSteps | _EncDecSteps | _StateSteps | _WindowSteps | _RecomputeSteps:
    """Return the prefill/step strategy that decodes ``model``; ``expand``: rows per prompt (beam
    search: each prompt's rows are adjacent)."""
    kind = family(model)
    if kind == "encdec":
        return _EncDecSteps(model, prompts, max_new_tokens, use_cache, device, expand)
    prompts = [p for p in prompts for _ in range(expand)]
    if kind == "decoder":
        return _DecoderSteps(model, prompts, max_new_tokens, use_cache, device)
    if not use_cache:
        return _RecomputeSteps(model, prompts, device)
    if kind == "recurrent":
        return _StateSteps(lambda ids, state: model(ids, state, return_state=True), prompts, device)
    if kind == "elmo":
        return _StateSteps(model.forward_lm, prompts, device)
    return _WindowSteps(model, prompts, device)
