"""Multi-head Latent Attention (DeepSeek-V2, arXiv 2405.04434; as Hugging Face's ``DeepseekV3Attention``)
and its cache, which holds a small latent per token instead of keys and values.

Per token ``x``:

- queries: ``q = W_Q x`` (``q_lora_rank`` None, as V2-Lite) or the low-rank
  ``q = W_UQ RMSNorm(W_DQ x)``; each head's query is ``[q_nope (d_nope); q_R (d_h^R)]``;
- ``kv_a(x) = [c_KV (d_c); k_R (d_h^R)]``: the latent ``c_KV`` (then its RMSNorm) and ONE rotary
  key ``k_R`` shared by all heads;
- ``kv_b(c_KV) = [k_nope; v]`` per head (``W_UK``, ``W_UV``);
- decoupled RoPE rotates ``q_R`` and ``k_R`` only; scores ``(q_nope . k_nope + q_R . k_R) /
  sqrt(d_nope + d_h^R)`` (no YaRN ``mscale``: YaRN RoPE is refused where the config is read).

:class:`MLACache` keeps, per layer and token, ``[c_KV (after its norm); k_R (after RoPE)]``:
``d_c + d_h^R`` numbers, against ``2 n_h d_h`` for MHA.

Two ways to attend over the cached latent, equal up to rounding:

- ``naive``: up-project every cached ``c_KV`` to keys and values with ``kv_b`` and run SDPA;
  the up-projection of the whole context is repeated at every step.
- ``absorbed``: fold ``W_UK`` into the query and ``W_UV`` into the output. Each head's
  ``q_nope W_UK`` is a query in latent space, so scores are ``(q_nope W_UK) . c_KV + q_R . k_R``:
  an MQA over ``[c_KV; k_R]`` with one shared KV head; the output ``softmax . c_KV`` goes through
  ``W_UV`` and then the output projection. No keys or values are materialised.

Which runs is :attr:`MultiHeadLatentAttention.decode` (``Decoder.set_mla_decode``). The
default is ``absorbed``, the faster for decoding (2.6x per step at 1K context for d_model 256,
d_c 128): it is used for forwards with a cache and few new tokens (decoding steps, short
chunks; below :attr:`MultiHeadLatentAttention.absorb_max_queries`, where its cost model says it
is cheaper). Forwards without a cache (training) and long chunks (prefill) take the naive path
in both modes: there one up-projection serves many queries and the naive scores are narrower
(``d_nope + d_h^R`` against ``d_c + d_h^R`` per head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.nn.linear import Linear
from lmlab.nn.norms import RMSNorm
from lmlab.nn.positions import apply_rope

DECODE_PATHS = ("naive", "absorbed")
# Hugging Face's DeepseekV3Attention builds its latent norms with this eps, not rms_norm_eps.
LATENT_NORM_EPS = 1e-6


class MLACache:
    """Preallocated MLA latents for every layer: ``(n_layer, B, max_len, d_c + d_h^R)``, each row
    ``[c_KV (normed); k_R (rotated)]``.

    Same protocol as :class:`~lmlab.nn.attention.KVCache`: ``length`` counts the positions
    written (the model advances it after all layers ran), ``max_len``, ``nbytes``, ``reset()``,
    ``reorder(index)``. One tensor per layer, so the absorbed path reads it as the single key
    (and value) head of an MQA without copying.
    """

    def __init__(self, n_layer: int, batch_size: int, max_len: int, kv_lora_rank: int, rope_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.latent = torch.zeros(n_layer, batch_size, max_len, kv_lora_rank + rope_dim, dtype=dtype,
                                  device=device)
        self.kv_lora_rank, self.rope_dim = kv_lora_rank, rope_dim
        self._layers = list(self.latent.unbind(0))  # per-layer views, made once
        self.length = 0

    @property
    def max_len(self) -> int:
        """Number of positions the cache can hold."""
        return self.latent.shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds (allocated for ``max_len`` positions):
        ``n_layer * B * max_len * (d_c + d_h^R) * element size``."""
        return self.latent.nbytes

    def update(self, layer: int, latent: torch.Tensor) -> torch.Tensor:
        """Store ``latent (B, T, d_c + d_h^R)`` for ``layer``; return a view of all latents so far
        ``(B, length + T, d_c + d_h^R)``."""
        cache = self._layers[layer]
        start, T = self.length, latent.shape[1]
        cache.narrow(1, start, T).copy_(latent)
        return cache.narrow(1, 0, start + T)

    def reset(self) -> None:
        """Forget the stored positions (the buffer is reused)."""
        self.length = 0

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (beam search). Copies in place, so the per-layer views stay valid."""
        self.latent.copy_(self.latent.index_select(1, index))


class MultiHeadLatentAttention(nn.Module):
    """MLA self-attention (see the module docstring), called as :class:`~lmlab.nn.attention.Attention`
    is: ``(x, rope, cache, layer, mask, is_causal) -> (B, T, d_model)``, with an :class:`MLACache`.

    Parameters (Hugging Face names): ``q`` (``q_proj``) or ``q_a``/``q_norm``/``q_b``
    (``q_a_proj``/``q_a_layernorm``/``q_b_proj``), ``kv_a`` (``kv_a_proj_with_mqa``), ``kv_norm``
    (``kv_a_layernorm``), ``kv_b`` (``kv_b_proj``), ``proj`` (``o_proj``). ``bias`` (HF's
    ``attention_bias``) adds biases to ``q_a``, ``kv_a`` and ``proj``, as HF does. The rotary
    half of each query head and ``k_R`` use rotate-half RoPE pairing.
    """

    def __init__(self, d_model: int, n_head: int, kv_lora_rank: int, qk_rope_head_dim: int,
                 qk_nope_head_dim: int, v_head_dim: int, q_lora_rank: int | None = None, bias: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        if qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim={qk_rope_head_dim} must be even for RoPE")
        self.n_head, self.kv_lora_rank, self.rope_dim = n_head, kv_lora_rank, qk_rope_head_dim
        self.nope_dim, self.v_dim, self.q_lora_rank = qk_nope_head_dim, v_head_dim, q_lora_rank
        qk_dim = qk_nope_head_dim + qk_rope_head_dim
        if q_lora_rank is None:
            self.q = Linear(d_model, n_head * qk_dim, bias=False)
        else:
            self.q_a = Linear(d_model, q_lora_rank, bias=bias)
            self.q_norm = RMSNorm(q_lora_rank, LATENT_NORM_EPS)
            self.q_b = Linear(q_lora_rank, n_head * qk_dim, bias=False)
        self.kv_a = Linear(d_model, kv_lora_rank + qk_rope_head_dim, bias=bias)
        self.kv_norm = RMSNorm(kv_lora_rank, LATENT_NORM_EPS)
        self.kv_b = Linear(kv_lora_rank, n_head * (qk_nope_head_dim + v_head_dim), bias=False)
        self.proj = Linear(n_head * v_head_dim, d_model, bias=bias)
        self.scale = qk_dim ** -0.5
        self.dropout = dropout
        self.decode = "absorbed"
        # Multiply-adds per layer for T new tokens over L keys: naive L d_c H (d_nope + d_v) to
        # up-project the latent plus T L H (d_qk + d_v) to attend; absorbed T L H 2 (d_c + d_h^R)
        # (keys and values are the latent rows). Absorbed is cheaper while T stays below this.
        self.absorb_max_queries = (kv_lora_rank * (qk_nope_head_dim + v_head_dim)
                                   / max(1, 2 * (kv_lora_rank + qk_rope_head_dim) - qk_dim - v_head_dim))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: MLACache | None = None, layer: int = 0, mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        """Attend ``x (B, T, d_model)``; return ``(B, T, d_model)``.

        ``rope``: ``(cos, sin)`` of width ``d_h^R`` for the T positions (required);
        ``cache``/``layer``: where the latents are stored and read; ``mask`` (boolean, True =
        may attend, broadcastable to ``(B, 1, T, keys)``) and ``is_causal`` as
        :class:`~lmlab.nn.attention.Attention` takes them.
        """
        if rope is None:
            raise ValueError("MLA needs RoPE tables (cos, sin) of width qk_rope_head_dim")
        B, T, _ = x.shape
        nh, dr, dc = self.n_head, self.rope_dim, self.kv_lora_rank
        q = self.q(x) if self.q_lora_rank is None else self.q_b(self.q_norm(self.q_a(x)))
        q = q.view(B, T, nh, self.nope_dim + dr)
        c_kv, k_rope = self.kv_a(x).split([dc, dr], dim=-1)
        # One RoPE call for the heads' q_R and the shared k_R, as H + 1 heads.
        rotated = apply_rope(torch.cat([q[..., self.nope_dim:], k_rope[:, :, None]], dim=2), *rope)
        q_nope, (q_rope, k_rope) = q[..., :self.nope_dim], rotated.split([nh, 1], dim=2)
        latent = torch.cat([self.kv_norm(c_kv), k_rope[:, :, 0]], dim=-1)
        if cache is not None:
            latent = cache.update(layer, latent)
            if self.decode == "absorbed" and T < self.absorb_max_queries:
                return self.absorbed(q_nope, q_rope, latent, mask, is_causal)
        return self.naive(q_nope, q_rope, latent, mask, is_causal)

    def naive(self, q_nope: torch.Tensor, q_rope: torch.Tensor, latent: torch.Tensor,
              mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
        """Attention output ``(B, T, d_model)`` from queries ``q_nope (B, T, H, d_nope)``, rotated
        ``q_rope (B, T, H, d_h^R)`` and latents ``(B, L, d_c + d_h^R)``: the latents are up-projected
        to per-head keys ``[k_nope; k_R]`` and values, then SDPA."""
        B, T, nh, _ = q_nope.shape
        L = latent.shape[1]
        c_kv, k_rope = latent.split([self.kv_lora_rank, self.rope_dim], dim=-1)
        k_nope, v = self.kv_b(c_kv).view(B, L, nh, self.nope_dim + self.v_dim).split(
            [self.nope_dim, self.v_dim], dim=-1)
        k = torch.cat([k_nope, k_rope[:, :, None].expand(B, L, nh, self.rope_dim)], dim=-1)
        q = torch.cat([q_nope, q_rope], dim=-1)
        # Zero-padding the narrower of q/k and v to one head width lets SDPA take its flash kernel
        # (which needs equal widths) instead of the math one: measured 4-8x faster on CPU at 1K
        # tokens. Zeros add nothing to the scores (the scale is explicit) and the padded output
        # columns are dropped.
        qk_dim = self.nope_dim + self.rope_dim
        if self.v_dim < qk_dim:
            v = F.pad(v, (0, qk_dim - self.v_dim))
        elif self.v_dim > qk_dim:
            q, k = F.pad(q, (0, self.v_dim - qk_dim)), F.pad(k, (0, self.v_dim - qk_dim))
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal and mask is None,
            scale=self.scale)[..., :self.v_dim]
        return self.proj(y.transpose(1, 2).reshape(B, T, nh * self.v_dim))

    def absorbed(self, q_nope: torch.Tensor, q_rope: torch.Tensor, latent: torch.Tensor,
                 mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
        """The same output as :meth:`naive`, attending over the latents directly: each head's
        query becomes ``[q_nope W_UK; q_R]`` against the one shared key ``[c_KV; k_R]``; the
        attention-weighted latents go through ``W_UV`` and the output projection."""
        B, T, nh, _ = q_nope.shape
        dc = self.kv_lora_rank
        w = self.kv_b.weight.view(nh, self.nope_dim + self.v_dim, dc)
        w_uk, w_uv = w[:, :self.nope_dim], w[:, self.nope_dim:]
        # Heads as the batch of one bmm, batch rows and positions as its rows: each head's
        # weights are read once whatever B (a broadcast matmul would copy them B times).
        q_latent = torch.bmm(q_nope.permute(2, 0, 1, 3).reshape(nh, B * T, -1), w_uk)  # (H, B T, d_c)
        q = torch.cat([q_latent.view(nh, B, T, dc).transpose(0, 1), q_rope.transpose(1, 2)],
                      dim=-1)  # (B, H, T, d_c + d_h^R)
        kv = latent[:, None]  # (B, 1, L, d_c + d_h^R): one KV head
        dropout = self.dropout if self.training else 0.0
        # The value is the whole latent row, so q, k and v share one head width (CPU flash
        # kernel); the k_R part of the output is dropped.
        if T == 1:  # the heads become H queries against the one KV head (no GQA expansion)
            y = F.scaled_dot_product_attention(q.view(B, 1, nh, -1), kv, kv, attn_mask=mask,
                                               dropout_p=dropout, scale=self.scale)
            y = y.view(B, nh, 1, -1)
        else:
            y = F.scaled_dot_product_attention(q, kv, kv, attn_mask=mask, dropout_p=dropout,
                                               is_causal=is_causal and mask is None, enable_gqa=True,
                                               scale=self.scale)
        out = torch.bmm(y[..., :dc].transpose(0, 1).reshape(nh, B * T, dc), w_uv.transpose(1, 2))
        return self.proj(out.view(nh, B, T, -1).permute(1, 2, 0, 3).reshape(B, T, nh * self.v_dim))
