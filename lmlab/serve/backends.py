"""The two ways the serving :class:`~lmlab.serve.engine.Engine` runs its batch of requests.

Both answer the same calls of the scheduler: ``check(prompt, max_tokens, prompt_logprobs)`` refuses
what the model cannot do before a request is queued, ``prefill(prompt, scores)`` reads one
newcomer's prompt alone (its logits, and a state to admit), ``admit(state)`` gives it the next row,
``step(tokens)`` appends each running row's last token and returns the ``(n, V)`` logits after it,
``remove(i)`` frees row ``i`` by moving the last row into it (so the running rows are always
``0..n-1``) and ``clear()`` forgets them all (after a failed step).

* :class:`SlotBatch`, for Transformer decoders: every running request owns one slot (a batch row)
  of one cache the model allocates itself (``model.new_kv_cache(max_batch, block_size)``), with its
  own length: its keys sit at positions ``0..length-1`` exactly as in a solo run, a decode step
  writes each row's new key at that row's own length (:class:`SlotCache`), and a padding mask hides
  the columns past it. A newcomer is prefilled alone, as :func:`lmlab.generate.decode` prefills it,
  and its keys are copied into a free slot. One forward steps every row.
* :class:`SequenceBatch`, for every other model that generates (recurrent LMs, the NPLM, ELMo,
  Infini-attention decoders, encoder-decoders, the token n-gram): each request keeps its own
  :class:`~lmlab.generate.sequence.Stepper`, stepped one after another; their logits are stacked.

Either way each row's logits equal its solo run's, so greedy output does not depend on what else runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.generate.sequence import SequenceLM, Stepper, sequence_lm
from lmlab.generate.steps import context_limit, family
from lmlab.nn.attention import KVCache
from lmlab.nn.linear import use_gemv_layout
from lmlab.nn.mla import MLACache


class SlotCache:
    """The engine's batch cache: one slot (row) per running request of a cache made by the model
    (:class:`~lmlab.nn.attention.KVCache` or :class:`~lmlab.nn.mla.MLACache`), each row with its own
    length. Given to the model as its ``kv_cache`` for a step of rows ``0..n-1`` (after
    :meth:`prepare`): each row writes its new position at its own length and the step reads views of
    the first ``span`` positions, the longest row's; :attr:`mask` hides every row's columns past its
    own length."""

    def __init__(self, store: KVCache | MLACache):
        if isinstance(store, KVCache):
            self.tensors, self.seq_dim = (store.k, store.v), 3  # (layer, B, H, L, D)
        elif isinstance(store, MLACache):
            self.tensors, self.seq_dim = (store.latent,), 2  # (layer, B, L, C)
        else:
            raise LmlabError(f"the server batches models with a KVCache or an MLACache, not a "
                             f"{type(store).__name__}")
        self.store = store
        self.lengths = [0] * self.tensors[0].shape[1]
        self.n = self.span = 0
        self.rows = self.positions = self.mask = None

    @property
    def max_len(self) -> int:
        """Positions each slot holds."""
        return self.store.max_len

    @property
    def length(self) -> int:
        """The decoder's ``start``: the key positions of a step are ``0..span-1``."""
        return self.span - 1

    @length.setter
    def length(self, value: int) -> None:
        # The decoder sets cache.length after each step as if every row had one length; here each
        # slot keeps its own, advanced by advance(), so the decoder's assignment is ignored on purpose.
        del value

    def prepare(self, n: int) -> None:
        """Set up a decode step of slots ``0..n-1`` (position ids, mask, the span to read)."""
        device = self.tensors[0].device
        self.n = n
        self.positions = torch.tensor(self.lengths[:n], device=device)
        self.span = int(max(self.lengths[:n])) + 1
        self.rows = torch.arange(n, device=device)
        self.mask = torch.arange(self.span, device=device)[None, :] <= self.positions[:, None]

    def update(self, layer: int, *new: torch.Tensor) -> Any:
        """Write each row's new position (``new``: the cache's tensors for one position a row) at its
        own length; return views of the first ``span`` positions of rows ``0..n-1``."""
        sd = self.seq_dim - 1
        out = []
        for t, x in zip(self.tensors, new):
            view = t[layer]
            view.movedim(sd, 1)[self.rows, self.positions] = x.movedim(sd, 1)[:, 0]
            out.append(view.narrow(0, 0, self.n).narrow(sd, 0, self.span))
        return out[0] if len(out) == 1 else tuple(out)

    def advance(self) -> None:
        """Count the position each running row just wrote."""
        for i in range(self.n):
            self.lengths[i] += 1

    def load(self, slot: int, cache: KVCache | MLACache, length: int) -> None:
        """Copy the first ``length`` positions of a one-row ``cache`` (a prefill) into ``slot``."""
        src = (cache.k, cache.v) if isinstance(cache, KVCache) else (cache.latent,)
        for t, s in zip(self.tensors, src):
            t[:, slot].narrow(self.seq_dim - 1, 0, length).copy_(s[:, 0].narrow(self.seq_dim - 1, 0, length))
        self.lengths[slot] = length

    def move(self, src: int, dst: int) -> None:
        """Move slot ``src``'s positions into slot ``dst`` (a finished request's)."""
        n = self.lengths[src]
        for t in self.tensors:
            t[:, dst].narrow(self.seq_dim - 1, 0, n).copy_(t[:, src].narrow(self.seq_dim - 1, 0, n))
        self.lengths[dst] = n


class SlotBatch:
    """Transformer decoders (MHA/GQA/MQA, MLA), batched in the slots of one cache."""

    def __init__(self, model: nn.Module, max_batch: int):
        self.model = model.eval()
        use_gemv_layout(model)  # as lmlab.generate.decode lays out an inference model
        self.block_size = context_limit(model)
        self.vocab_size = model.config.vocab_size
        self.device = next(model.parameters()).device
        self.slots = SlotCache(model.new_kv_cache(max_batch, self.block_size))
        self.n = 0

    def check(self, prompt: list[int], max_tokens: int, prompt_logprobs: bool) -> None:
        """Nothing beyond the engine's checks."""

    def prefill(self, prompt: list[int], scores: bool) -> tuple[torch.Tensor | None, torch.Tensor, Any]:
        """Read ``prompt`` alone; return its ``(T, V)`` logits (when ``scores``), the ``(1, V)`` logits
        after it and its one-row cache."""
        ids = torch.tensor([prompt], device=self.device)
        cache = self.model.new_kv_cache(1, len(prompt))
        logits = self.model(ids, kv_cache=cache, last_only=not scores)
        return (logits[0] if scores else None), logits[:, -1], (cache, len(prompt))

    def admit(self, state: Any) -> None:
        """Copy a prefilled cache into the next slot."""
        cache, length = state
        self.slots.load(self.n, cache, length)
        self.n += 1

    def remove(self, i: int) -> None:
        """Free slot ``i``: the last running row moves into it."""
        last = self.n - 1
        if i != last:
            self.slots.move(last, i)
        self.n -= 1

    def clear(self) -> None:
        """Forget every running row."""
        self.n = 0

    def step(self, tokens: list[int]) -> torch.Tensor:
        """Append ``tokens`` (one per running row); return the ``(n, V)`` logits after them."""
        self.slots.prepare(self.n)
        ids = torch.tensor(tokens, device=self.device)
        logits = self.model(ids[:, None], kv_cache=self.slots, positions=self.slots.positions[:, None],
                            attention_mask=self.slots.mask)[:, -1]
        self.slots.advance()
        return logits


class SequenceBatch:
    """Any :class:`~lmlab.generate.sequence.SequenceLM`: one stepper per running request."""

    def __init__(self, lm: SequenceLM):
        self.model = lm
        self.block_size, self.vocab_size, self.device = lm.block_size, lm.vocab_size, lm.device
        self.steppers: list[Stepper] = []

    def check(self, prompt: list[int], max_tokens: int, prompt_logprobs: bool) -> None:
        """The model's own refusals (its optional ``check``)."""
        check = getattr(self.model, "check", None)
        if check is not None:
            check(prompt, max_tokens, prompt_logprobs)

    def prefill(self, prompt: list[int], scores: bool) -> tuple[torch.Tensor | None, torch.Tensor, Any]:
        """Start ``prompt``'s stepper; return the prompt's ``(T, V)`` logits (when ``scores``), the
        ``(1, V)`` logits after it and the stepper."""
        stepper = self.model.start(list(prompt))
        last = stepper.prefill()
        return (self.model.prompt_logits(list(prompt)) if scores else None), last, stepper

    def admit(self, state: Any) -> None:
        """Run the stepper in the next row."""
        self.steppers.append(state)

    def remove(self, i: int) -> None:
        """Drop row ``i``: the last row moves into it."""
        self.steppers[i] = self.steppers[-1]
        self.steppers.pop()

    def clear(self) -> None:
        """Forget every running row."""
        self.steppers.clear()

    def step(self, tokens: list[int]) -> torch.Tensor:
        """Step each row's stepper with its token; return their ``(n, V)`` logits stacked."""
        return torch.cat([s.step(int(t)) for s, t in zip(self.steppers, tokens)])


def backend_for(model: Any, max_batch: int) -> SlotBatch | SequenceBatch:
    """The batch that serves ``model``: :class:`SlotBatch` for a Transformer decoder with a KV cache,
    else :class:`SequenceBatch` (a torch model through :func:`~lmlab.generate.sequence.sequence_lm`:
    LmlabError naming the problem for one that cannot generate)."""
    if not isinstance(model, nn.Module):
        if not isinstance(model, SequenceLM):
            raise LmlabError(f"the server runs lmlab models and SequenceLMs (vocab_size, block_size, device, "
                             f"start, prompt_logits); a {type(model).__name__} is neither")
        return SequenceBatch(model)
    if family(model) == "decoder" and getattr(model.config, "attn", "mha") != "infini":
        return SlotBatch(model, max_batch)
    return SequenceBatch(sequence_lm(model))
