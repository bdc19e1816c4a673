"""Attention for every Transformer in the lab: one class for causal and bidirectional
self-attention and for cross-attention, with MHA, MQA and GQA (``n_kv_heads``), and its caches.

MHA has ``n_kv_heads == n_heads``, MQA ``n_kv_heads == 1``, GQA anything in between that
divides ``n_heads``; query head ``h`` reads KV head ``h // (n_heads // n_kv_heads)``.
In self-attention, queries, keys and values come from one fused projection laid out
``[q; k; v]``; in cross-attention (``cross=True``, the encoder-decoder's second sublayer) the
queries come from ``q`` and the keys and values from ``kv`` (``[k; v]``) applied to the encoder
output, once per generation (:class:`CrossKVCache`).

Masks are boolean (True = may attend) or float (added to the scores: T5's relative position
bias, with padding folded in as a large negative number), broadcastable to
``(B, n_head, T_query, T_key)``; :func:`padding_mask` turns a ``(B, T)`` attention mask of
1s and 0s into the boolean form for bidirectional attention.

Prefix tuning (Li & Liang 2021) hooks in here: an optional ``prefix`` module on a
self-attention returns per-layer keys and values ``(1 | B, n_kv_heads, P, head_dim)`` (or None
when it is switched off); they are prepended to the keys and values after the cache (the cache
holds only real positions), carry no position, and every query may attend to them, so masks
grow by P leading columns that are all True (:func:`with_prefix`).

Masking rule (see REFERENCE.md): SDPA's ``is_causal`` aligns its mask top-left, which is
only right when there are as many queries as keys. With a cache, a single query needs no
mask and a chunk of queries needs an explicit lower-right-aligned mask
(:func:`causal_mask`); the caller (the decoder) builds it once for all layers.

Attention probabilities: SDPA never materialises them, so the default path has none. Inside
``with record_attention(model) as probs:`` every self-attention also computes its probabilities
explicitly (:func:`attention_probs`, the same scores, mask and scale as its SDPA call) and
appends them to ``probs``, one ``(B, n_head, T_query, T_key)`` tensor per call in call order; its
output still comes from SDPA, so recording changes nothing else (induction-head analysis).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.nn.linear import Linear
from lmlab.nn.positions import apply_rope


class KVCache:
    """Preallocated keys and values for every layer: ``(n_layer, B, n_kv_heads, max_len, head_dim)``.

    ``length`` counts the positions already written. Layers write their new keys at
    ``[length, length + T)`` and read views of ``[0, length + T)``, so decoding allocates
    nothing per step; the model advances ``length`` after all layers ran.
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (n_layer, batch_size, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._layers = [(self.k[i], self.v[i]) for i in range(n_layer)]  # per-layer views, made once
        self.length = 0

    @property
    def max_len(self) -> int:
        """Number of positions the cache can hold."""
        return self.k.shape[3]

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds (allocated for ``max_len`` positions)."""
        return self.k.nbytes + self.v.nbytes

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v (B, H_kv, T, D)`` for ``layer``; return views of all keys/values so far."""
        ck, cv = self._layers[layer]
        start, T = self.length, k.shape[2]
        ck.narrow(2, start, T).copy_(k)
        cv.narrow(2, start, T).copy_(v)
        return ck.narrow(2, 0, start + T), cv.narrow(2, 0, start + T)

    def reset(self) -> None:
        """Forget the stored positions (the buffers are reused)."""
        self.length = 0

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (beam search: each beam continues one of the previous beams).
        Copies in place, so the per-layer views stay valid."""
        self.k.copy_(self.k.index_select(1, index))
        self.v.copy_(self.v.index_select(1, index))


class CrossKVCache:
    """Cross-attention keys and values of the encoder output, one ``(k, v)`` per layer.

    The encoder output does not change while the decoder generates, so each layer projects
    it on its first call and reuses the result at every later step.
    """

    def __init__(self, n_layer: int):
        self.kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layer

    def get(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Return the stored ``(k, v)`` of ``layer`` (``(B, H_kv, S, D)`` each), None before the first."""
        return self.kv[layer]

    def put(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the keys and values of ``layer``."""
        self.kv[layer] = (k, v)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (beam search)."""
        self.kv = [None if kv is None else (kv[0].index_select(0, index), kv[1].index_select(0, index))
                   for kv in self.kv]


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Return the boolean SDPA mask ``(B, 1, 1, T)`` (True = may attend) for a ``(B, T)`` mask of
    1 (real token) and 0 (padding): every query sees every real key (bidirectional attention)."""
    return attention_mask.to(torch.bool)[:, None, None, :]


def causal_mask(n_query: int, n_key: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Return the lower-right-aligned causal mask ``(n_query, n_key)``: True where query ``i`` may
    see key ``j``, i.e. ``j <= i + n_key - n_query`` (the queries are the last ``n_query`` positions)."""
    i = torch.arange(n_query, device=device)[:, None]
    j = torch.arange(n_key, device=device)[None, :]
    return j <= i + (n_key - n_query)


def with_prefix(k: torch.Tensor, v: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor,
                mask: torch.Tensor | None, is_causal: bool,
                n_query: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Return keys, values ``(B, H_kv, P + S, D)`` with the prefix ``pk, pv (1 | B, H_kv, P, D)`` in front,
    and the mask for them: ``mask`` with P leading columns every query may attend (True, or 0 for
    a float mask); SDPA's causal flag (``is_causal``) becomes an explicit lower-right causal mask."""
    B, P = k.shape[0], pk.shape[2]
    k = torch.cat([pk.to(k.dtype).expand(B, -1, -1, -1), k], dim=2)
    v = torch.cat([pv.to(v.dtype).expand(B, -1, -1, -1), v], dim=2)
    if mask is None:
        return k, v, causal_mask(n_query, k.shape[2], k.device) if is_causal else None
    lead = (torch.ones if mask.dtype == torch.bool else torch.zeros)(
        *mask.shape[:-1], P, dtype=mask.dtype, device=mask.device)
    return k, v, torch.cat([lead, mask], dim=-1)


def attention_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None,
                    is_causal: bool = False, scale: float | None = None) -> torch.Tensor:
    """Return softmax attention probabilities ``(B, n_head, T_query, T_key)`` (fp32) for queries
    ``(B, n_head, T_query, D)`` and keys ``(B, n_kv_heads, T_key, D)``, weighed as
    ``F.scaled_dot_product_attention`` weighs the values: GQA keys shared by contiguous query heads,
    ``is_causal`` aligned top-left, a boolean mask (True = may attend) or a float one added."""
    nh, nkv = q.shape[1], k.shape[1]
    if nh != nkv:
        k = k.repeat_interleave(nh // nkv, dim=1)
    scores = q.float() @ k.float().transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if is_causal:
        allowed = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    return scores.softmax(dim=-1)


@contextmanager
def record_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, every self-attention of ``model`` appends its probabilities (see
    :func:`attention_probs`) to the yielded list, one tensor per call: for one forward pass of a
    decoder, one per layer in order. Recording stops when the block ends."""
    layers = [m for m in model.modules() if isinstance(m, Attention) and not m.cross]
    store: list[torch.Tensor] = []
    for m in layers:
        m.record = store
    try:
        yield store
    finally:
        for m in layers:
            m.record = None


class Attention(nn.Module):
    """Multi-head attention with grouped KV heads, optional RoPE and a cache.

    ``cross=False``: self-attention over ``x`` (causal or bidirectional, by the mask and
    ``is_causal``), keys and values appended to a :class:`KVCache` when one is given.
    ``cross=True``: queries from ``x``, keys and values from ``memory`` (width ``d_memory``,
    default ``d_model``), kept in a :class:`CrossKVCache` when one is given. ``scale``: the
    score scale (None = ``1/sqrt(head_dim)``; T5 folds it into its weights and uses 1).
    """

    def __init__(self, d_model: int, n_head: int, n_kv_heads: int, head_dim: int, bias: bool = False,
                 dropout: float = 0.0, cross: bool = False, d_memory: int | None = None,
                 scale: float | None = None):
        super().__init__()
        if n_head % n_kv_heads:
            raise ValueError(f"n_head={n_head} is not a multiple of n_kv_heads={n_kv_heads}")
        self.n_head, self.n_kv_heads, self.head_dim = n_head, n_kv_heads, head_dim
        self.cross, self.scale = cross, scale
        if cross:
            self.q = Linear(d_model, n_head * head_dim, bias=bias)
            self.kv = Linear(d_memory or d_model, 2 * n_kv_heads * head_dim, bias=bias)
        else:
            self.qkv = Linear(d_model, (n_head + 2 * n_kv_heads) * head_dim, bias=bias)
        self.proj = Linear(n_head * head_dim, d_model, bias=bias)
        self.dropout = dropout
        self.prefix: nn.Module | None = None  # prefix tuning's keys/values (see the module docstring)
        self.record: list[torch.Tensor] | None = None  # set by record_attention

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: KVCache | CrossKVCache | None = None, layer: int = 0, mask: torch.Tensor | None = None,
                is_causal: bool = False, memory: torch.Tensor | None = None) -> torch.Tensor:
        """Attend ``x (B, T, d_model)``; return ``(B, T, d_model)``.

        ``rope``: ``(cos, sin)`` for the T positions; ``cache``/``layer``: where to store and
        read keys/values; ``mask``: boolean (True = may attend) or float (added to the
        scores), broadcastable to ``(B, n_head, T, keys)``; ``is_causal``: use SDPA's own
        causal mask (only valid when the queries are all the keys, i.e. no cache content
        before them); ``memory (B, S, d_memory)``: the encoder output (cross-attention).
        """
        if self.cross:
            return self._cross(x, memory, cache, layer, mask)
        B, T, _ = x.shape
        nh, nkv, hd = self.n_head, self.n_kv_heads, self.head_dim
        # With one position, (B, 1, H, D) and (B, H, 1, D) are the same memory: view the
        # projection straight into SDPA's layout and skip the transposes (decoding).
        hdim = 1 if T == 1 else 2
        qkv = self.qkv(x).view((B, nh + 2 * nkv, 1, hd) if T == 1 else (B, T, nh + 2 * nkv, hd))
        if rope is not None:
            qk, v = qkv.split([nh + nkv, nkv], dim=hdim)
            q, k = apply_rope(qk, *rope).split([nh, nkv], dim=hdim)  # q and k rotated in one go
        else:
            q, k, v = qkv.split([nh, nkv, nkv], dim=hdim)
        if T > 1:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        prefix = self.prefix(B) if self.prefix is not None else None
        if prefix is not None:
            k, v, mask = with_prefix(k, v, *prefix, mask, is_causal, T)
        if self.record is not None:
            self.record.append(attention_probs(q, k, mask, is_causal and mask is None, self.scale).detach())
        dropout = self.dropout if self.training else 0.0
        if T == 1:
            # One query per head: the query heads sharing a KV head become that many queries
            # against it, so K/V are never repeated (measured fastest for decoding).
            if mask is not None and mask.shape[1] > 1:  # per-head (bias) mask: heads -> (kv head, group)
                mask = mask.reshape(mask.shape[0], nkv, nh // nkv, mask.shape[-1])
            y = F.scaled_dot_product_attention(q.reshape(B, nkv, nh // nkv, hd), k, v, attn_mask=mask,
                                               dropout_p=dropout, scale=self.scale)
            y = y.reshape(B, 1, nh * hd)
        else:
            # enable_gqa measured 1.5-3x faster on CPU than repeating K/V for T > 1.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                               is_causal=is_causal and mask is None, enable_gqa=nh > nkv,
                                               scale=self.scale)
            y = y.transpose(1, 2).reshape(B, T, nh * hd)
        return self.proj(y)

    def _cross(self, x: torch.Tensor, memory: torch.Tensor | None, cache: CrossKVCache | None, layer: int,
               mask: torch.Tensor | None) -> torch.Tensor:
        """Cross-attention of ``x`` to ``memory`` (or to the keys/values cached for ``layer``)."""
        B, T, _ = x.shape
        nh, nkv, hd = self.n_head, self.n_kv_heads, self.head_dim
        kv = cache.get(layer) if cache is not None else None
        if kv is None:
            if memory is None:
                raise ValueError("cross-attention needs the encoder output (memory) on its first call")
            S = memory.shape[1]
            k, v = self.kv(memory).view(B, S, 2 * nkv, hd).transpose(1, 2).split([nkv, nkv], dim=1)
            if cache is not None:  # read at every decoding step: laid out once as SDPA reads them fastest
                k, v = k.contiguous(), v.contiguous()
                cache.put(layer, k, v)
        else:
            k, v = kv
        q = self.q(x).view(B, T, nh, hd).transpose(1, 2)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=nh > nkv,
                                           scale=self.scale)
        return self.proj(y.transpose(1, 2).reshape(B, T, nh * hd))
