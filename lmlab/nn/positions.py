"""Position information: learned and sinusoidal absolute embeddings, T5's bucketed relative
position bias, and RoPE.

RoPE follows Hugging Face LLaMA's "rotate half" pairing: dimension ``i`` is rotated with
dimension ``i + head_dim/2`` (Meta's original code pairs ``2i`` with ``2i+1``; converting
weights between the two needs a permutation of the q/k rows).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lmlab.errors import LmlabError

ROPE_TYPES = ("default", "linear", "llama3")


class LearnedPositions(nn.Module):
    """A trained embedding per absolute position (GPT-2)."""

    def __init__(self, max_positions: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_positions, dim))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """Return the embeddings of integer ``positions`` (any shape) -> ``(*shape, dim)``."""
        return self.weight[positions]


def sinusoidal_table(max_positions: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Return Vaswani et al.'s table: ``PE[p, 2i] = sin(p / base^(2i/dim))``, ``PE[p, 2i+1] = cos(...)``."""
    pos = torch.arange(max_positions, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(base) / dim))
    table = torch.zeros(max_positions, dim)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv[: dim // 2])
    return table


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal absolute position embeddings (no parameters)."""

    def __init__(self, max_positions: int, dim: int):
        super().__init__()
        self.register_buffer("table", sinusoidal_table(max_positions, dim), persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """Return the embeddings of integer ``positions`` (any shape) -> ``(*shape, dim)``."""
        return self.table[positions]


def relative_position_bucket(relative: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """Return T5's bucket of each relative position ``key - query`` (Raffel et al. 2020).

    Half the buckets (all of them when causal) cover exact distances ``0..num_buckets/4-1``
    (``/2`` when causal), the rest grow logarithmically up to ``max_distance``, beyond which
    every distance shares the last bucket; bidirectional buckets keep the sign (later keys use
    the upper half).
    """
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).long() * num_buckets
        relative = relative.abs()
    else:
        relative = -torch.clamp(relative, max=0)
    max_exact = num_buckets // 2
    is_small = relative < max_exact
    large = max_exact + (torch.log(relative.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, relative, large)


class RelativePositionBias(nn.Module):
    """T5's learned scalar bias per head and relative-position bucket, added to the attention scores.

    ``weight (num_buckets, n_head)`` is Hugging Face's ``relative_attention_bias.weight``. The
    encoder uses bidirectional buckets, the decoder's self-attention causal ones; the bias is
    computed once per forward pass and shared by all layers. The buckets depend on the distance
    alone, so they are computed once for every distance up to the longest seen (a table, grown by
    doubling) and looked up: a decoding step's bias is then a slice and one gather, not the dozen
    small ops of the bucketing.
    """

    def __init__(self, n_head: int, num_buckets: int = 32, max_distance: int = 128,
                 bidirectional: bool = True):
        super().__init__()
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.weight = nn.Parameter(torch.empty(num_buckets, n_head))
        nn.init.normal_(self.weight, std=0.02)
        self._table: torch.Tensor | None = None  # bucket of distance r at index r + reach - 1

    def _buckets(self, reach: int) -> tuple[torch.Tensor, int]:
        """Return ``(table, r0)``: the bucket of every distance ``r`` in ``-r0..r0`` at ``table[r + r0]``,
        with ``r0 >= reach - 1``."""
        table = self._table
        device = self.weight.device
        if table is None or table.device != device or (table.shape[0] - 1) // 2 < reach - 1:
            r0 = 64
            while r0 < reach - 1:
                r0 *= 2
            table = relative_position_bucket(torch.arange(-r0, r0 + 1, device=device), self.bidirectional,
                                             self.num_buckets, self.max_distance)
            self._table = table
        return table, (table.shape[0] - 1) // 2

    def forward(self, n_query: int, n_key: int, start: int = 0) -> torch.Tensor:
        """Return the bias ``(1, n_head, n_query, n_key)`` for queries at positions
        ``start..start+n_query-1`` and keys at ``0..n_key-1``."""
        table, r0 = self._buckets(max(n_key, start + n_query))
        if n_query == 1:  # distances -start .. n_key-1-start: a slice of the table
            bucket = table[r0 - start: r0 - start + n_key][None, :]
        else:
            device = table.device
            query = torch.arange(start, start + n_query, device=device)[:, None]
            bucket = table[torch.arange(r0, r0 + n_key, device=device)[None, :] - query]
        return self.weight[bucket].permute(2, 0, 1).unsqueeze(0)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None = None) -> torch.Tensor:
    """Return RoPE's ``head_dim/2`` inverse frequencies ``theta^(-2i/head_dim)``, rescaled if asked.

    ``scaling`` (Hugging Face's ``rope_scaling``): ``{"rope_type": "linear", "factor": f}``
    divides all frequencies by ``f``; ``{"rope_type": "llama3", "factor", "low_freq_factor",
    "high_freq_factor", "original_max_position_embeddings"}`` divides the low frequencies by
    ``factor``, keeps the high ones and interpolates smoothly in between (Llama 3.1).
    """
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    kind = rope_type(scaling)
    if kind == "default":
        return inv
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv / factor
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_type(scaling: dict[str, Any] | None) -> str:
    """Return the RoPE variant named by a ``rope_scaling`` dict (``'default'`` for None)."""
    if not scaling:
        return "default"
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise LmlabError(f"RoPE scaling type {kind!r} is not supported; use one of {', '.join(ROPE_TYPES)}")
    needed = {"default": [], "linear": ["factor"],
              "llama3": ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"]}
    missing = [k for k in needed[kind] if k not in scaling]
    if missing:
        raise LmlabError(f"rope_scaling of type {kind!r} lacks {', '.join(missing)}; add them to the config")
    return kind


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021) with cos/sin tables precomputed once.

    The tables are non-persistent buffers of shape ``(max_positions, 1, head_dim)`` (not
    saved with the weights); :meth:`forward` slices or gathers the rows for the positions
    in use, shaped to broadcast over ``(B, T, heads, head_dim)`` activations.
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float = 10000.0,
                 scaling: dict[str, Any] | None = None):
        super().__init__()
        if head_dim % 2:
            raise LmlabError(f"RoPE needs an even head dimension, got {head_dim}; change d_model or n_head")
        inv = rope_inv_freq(head_dim, theta, scaling)
        freqs = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv[None, :]
        # cos/sin of HF's cat(freqs, freqs) layout; the sine's first half is negated so that
        # rotate_half(x) * sin == roll(x, D/2) * signed_sin (one roll instead of two slices, a neg, a cat).
        # stored (positions, 1, D): a slice broadcasts over the heads as it is
        self.register_buffer("cos", torch.cat([freqs, freqs], dim=-1).cos()[:, None, :], persistent=False)
        signed_sin = torch.cat([-freqs.sin(), freqs.sin()], dim=-1)
        self.register_buffer("sin", signed_sin[:, None, :], persistent=False)

    def forward(self, start: int, length: int, positions: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(cos, signed sin)`` for positions ``start..start+length`` as ``(T, 1, D)`` views,
        or for explicit ``positions (B, T)`` as ``(B, T, 1, D)``; pass them to :func:`apply_rope`."""
        if positions is None:
            return self.cos[start:start + length], self.sin[start:start + length]
        return self.cos[positions], self.sin[positions]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x (B, T, H, D)`` by the position angles: HF's ``x cos + rotate_half(x) sin``,
    with ``(cos, signed_sin)`` from :class:`RotaryEmbedding`."""
    if cos.dtype != x.dtype:
        cos, signed_sin = cos.to(x.dtype), signed_sin.to(x.dtype)
    return torch.addcmul(x * cos, torch.roll(x, x.shape[-1] // 2, dims=-1), signed_sin)
