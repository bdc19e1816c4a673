"""Prompt tuning (Lester et al. 2021): ``n_prompt`` trained virtual-token embeddings prepended to
every input, the model otherwise frozen.

No model class is forked: the virtual tokens get the ids ``vocab_size .. vocab_size + n - 1``,
which the token embedding reads from the soft prompt (:class:`SoftPrompt`, attached to it as
``tok_emb.prompt``, with a pre-hook and a hook); the language model's entry points
(``forward``, and ``hidden_states`` where it has one) prepend those ids to a fresh input, one
column of ones to a ``(B, L)`` attention mask, ``-100`` to targets and the virtual positions to
explicit position ids, and cut the virtual positions off the output, so callers see the shapes
they passed. With a KV cache the ids are prepended once (to the first call); later calls
continue after them. The soft prompt starts as the embeddings of randomly drawn vocabulary
tokens, as in the paper.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.tuning.module import TuningModule
from lmlab.tuning.options import TuningOptions

ENTRY_POINTS = ("forward", "hidden_states")
IGNORE_INDEX = -100


class SoftPrompt(TuningModule):
    """The trained embeddings ``weight (n_prompt, d_model)`` of the virtual ids ``>= vocab_size``."""

    def __init__(self, init: torch.Tensor, vocab_size: int):
        super().__init__()
        self.weight = nn.Parameter(init.detach().clone())
        self.vocab_size = vocab_size
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # the pre-hook's (mask, index)

    @property
    def n(self) -> int:
        """Number of virtual tokens."""
        return self.weight.shape[0]


def _embedding_pre_hook(emb: nn.Embedding, inputs: tuple) -> tuple:
    ids = inputs[0]
    prompt: SoftPrompt = emb.prompt
    virtual = ids >= prompt.vocab_size
    prompt._pending.append((virtual, (ids - prompt.vocab_size).clamp(0, prompt.n - 1)))
    return (torch.where(virtual, 0, ids), *inputs[1:])


def _embedding_hook(emb: nn.Embedding, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
    prompt: SoftPrompt = emb.prompt
    virtual, index = prompt._pending.pop()
    return torch.where(virtual[..., None], prompt.weight.to(out.dtype)[index], out)


def token_embedding(lm: nn.Module) -> nn.Embedding:
    """Return the token embedding of a language model (``tok_emb``); raise LmlabError without one."""
    emb = getattr(lm, "tok_emb", None)
    if not isinstance(emb, nn.Embedding) or not hasattr(lm, "blocks"):
        raise LmlabError(f"prompt tuning prepends virtual tokens to a Transformer's input; a "
                         f"{type(lm).__name__} has no token embedding 'tok_emb' and blocks (families that "
                         "have: decoder, encoder); use LoRA or full fine-tuning")
    return emb


def _prepending(prompt: SoftPrompt, fn: Callable, busy: list[bool]) -> Callable:
    """Wrap the entry point ``fn`` so it prepends the virtual tokens (module docstring); ``busy``,
    shared by the entry points of one model, makes one calling another (forward -> hidden_states)
    prepend once."""
    sig = inspect.signature(fn)
    ids_name = next(iter(sig.parameters))

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if busy[0] or not prompt.enabled:
            return fn(*args, **kwargs)
        bound = sig.bind(*args, **kwargs)
        a = bound.arguments
        ids = a[ids_name]
        B, T = ids.shape
        n = prompt.n
        cache = a.get("kv_cache")
        fresh = cache is None or getattr(cache, "length", 0) == 0
        dev = ids.device
        if fresh:
            virtual = torch.arange(prompt.vocab_size, prompt.vocab_size + n, device=dev).expand(B, n)
            a[ids_name] = torch.cat([virtual, ids], dim=1)
            if a.get("targets") is not None:
                ignore = torch.full((B, n), IGNORE_INDEX, dtype=a["targets"].dtype, device=dev)
                a["targets"] = torch.cat([ignore, a["targets"]], dim=1)
            if a.get("token_type_ids") is not None:
                a["token_type_ids"] = torch.cat([torch.zeros_like(a["token_type_ids"][:, :1]).expand(B, n),
                                                 a["token_type_ids"]], dim=1)
        mask = a.get("attention_mask")
        if mask is not None:
            if mask.dim() != 2:
                raise LmlabError("prompt tuning takes a (B, T) padding mask, not a (B, T, T) attention mask")
            a["attention_mask"] = torch.cat([torch.ones_like(mask[:, :1]).expand(B, n), mask], dim=1)
        if a.get("positions") is not None:
            pos = a["positions"] + n
            if fresh:
                pos = torch.cat([torch.arange(n, device=dev, dtype=pos.dtype).expand(B, n), pos], dim=1)
            a["positions"] = pos
        busy[0] = True
        try:
            out = fn(*bound.args, **bound.kwargs)
        finally:
            busy[0] = False
        if fresh and isinstance(out, torch.Tensor) and out.dim() >= 2 and out.shape[1] == n + T:
            out = out[:, n:]
        return out

    return wrapper


def apply_prompt(lm: nn.Module, opts: TuningOptions) -> tuple[list[str], list]:
    """Give the language model ``lm`` a soft prompt of ``opts.n_prompt`` virtual tokens; return the
    wrapped entry points and the hook handles."""
    emb = token_embedding(lm)
    if getattr(getattr(lm, "config", None), "attn", "mha") == "infini":
        raise LmlabError("prompt tuning needs position ids for the virtual tokens; Infini-attention counts "
                         "positions per segment: use LoRA or adapters for this model")
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, emb.num_embeddings, (opts.n_prompt,), generator=gen).to(emb.weight.device)
    prompt = SoftPrompt(emb.weight.detach()[rows], emb.num_embeddings)
    emb.prompt = prompt
    handles = [emb.register_forward_pre_hook(_embedding_pre_hook), emb.register_forward_hook(_embedding_hook)]
    wrapped, busy = [], [False]
    for name in ENTRY_POINTS:
        fn = getattr(lm, name, None)
        if fn is not None:
            setattr(lm, name, _prepending(prompt, fn, busy))
            wrapped.append(name)
    if hasattr(lm, "new_kv_cache"):  # the cache holds the virtual positions too
        lm.new_kv_cache = _roomier_cache(lm.new_kv_cache, prompt)
        wrapped.append("new_kv_cache")
    handles.append(_Unwrap(lm, wrapped))
    return [f"tok_emb.prompt ({', '.join(wrapped)})"], handles


def _roomier_cache(fn: Callable, prompt: SoftPrompt) -> Callable:
    """Wrap ``new_kv_cache`` so an explicit ``max_len`` also makes room for the virtual tokens."""

    @functools.wraps(fn)
    def wrapper(batch_size: int, max_len: int | None = None, *args, **kwargs):
        if max_len is not None and prompt.enabled:
            max_len += prompt.n
        return fn(batch_size, max_len, *args, **kwargs)

    return wrapper


class _Unwrap:
    """A handle whose ``remove()`` takes the wrapped entry points off the model again."""

    def __init__(self, lm: nn.Module, names: list[str]):
        self.lm, self.names = lm, names

    def remove(self) -> None:
        """Restore the class's own entry points."""
        for name in self.names:
            self.lm.__dict__.pop(name, None)
