"""The Transformer block of every model in the lab: pre-norm or post-norm, with an optional
cross-attention sublayer.

Pre-norm (GPT-2, LLaMA, T5): ``x + sublayer(norm(x))``. Post-norm (Vaswani, BERT, BART):
``norm(x + sublayer(x))``. Sublayers in order: self-attention (``attn``, ``norm1``),
cross-attention to the encoder output (``cross_attn``, ``norm_cross``; encoder-decoders
only) and the feed-forward block (``mlp``, ``norm2``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.nn.attention import Attention, CrossKVCache, KVCache
from lmlab.nn.mlp import MLP, GatedMLP
from lmlab.nn.norms import build_norm


def derive_head_dim(d_model: int, n_head: int) -> int:
    """Return ``d_model // n_head``, the usual head width; raise LmlabError when it does not divide."""
    if d_model % n_head:
        raise LmlabError(f"d_model={d_model} is not divisible by n_head={n_head}; "
                         "change one of them or set head_dim")
    return d_model // n_head


@dataclass(frozen=True)
class BlockSpec:
    """The shape and variant of a block. ``act`` with ``gated`` picks the feed-forward block:
    dense ``gelu``/``gelu_tanh``/``relu``, gated ``silu`` (SwiGLU) or ``gelu_tanh`` (GEGLU).
    ``attn_dropout`` (None: ``dropout``) drops attention probabilities, ``dropout`` each
    sublayer's output; ``scale`` is the attention score scale (None: 1/sqrt(head_dim))."""

    d_model: int
    n_head: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_bias: bool = True
    bias: bool = True
    act: str = "gelu_tanh"
    gated: bool = False
    post_norm: bool = False
    cross: bool = False
    d_memory: int | None = None
    dropout: float = 0.0
    attn_dropout: float | None = None
    scale: float | None = None


class TransformerBlock(nn.Module):
    """One Transformer block (see the module docstring) built from a :class:`BlockSpec`."""

    def __init__(self, spec: BlockSpec, attn: nn.Module | None = None):
        """``attn``: the self-attention module (MLA, Infini-attention) called as
        :class:`Attention` is; None builds the spec's :class:`Attention`."""
        super().__init__()
        s = spec
        self.post_norm = s.post_norm
        attn_drop = s.dropout if s.attn_dropout is None else s.attn_dropout
        self.norm1 = build_norm(s.norm, s.d_model, s.norm_eps, s.norm_bias)
        self.attn = attn if attn is not None else Attention(s.d_model, s.n_head, s.n_kv_heads, s.head_dim,
                                                            s.bias, attn_drop, scale=s.scale)
        self.cross_attn: Attention | None = None
        if s.cross:
            self.norm_cross = build_norm(s.norm, s.d_model, s.norm_eps, s.norm_bias)
            self.cross_attn = Attention(s.d_model, s.n_head, s.n_kv_heads, s.head_dim, s.bias, attn_drop,
                                        cross=True, d_memory=s.d_memory, scale=s.scale)
        self.norm2 = build_norm(s.norm, s.d_model, s.norm_eps, s.norm_bias)
        self.mlp: nn.Module = (GatedMLP(s.d_model, s.d_ff, s.bias, s.act) if s.gated
                               else MLP(s.d_model, s.d_ff, s.bias, s.act))
        self.drop = nn.Dropout(s.dropout) if s.dropout > 0 else None

    def _residual(self, x: torch.Tensor, norm: nn.Module, sublayer, *args, **kwargs) -> torch.Tensor:
        if self.post_norm:
            y = sublayer(x, *args, **kwargs)
            return norm(x + (self.drop(y) if self.drop is not None else y))
        y = sublayer(norm(x), *args, **kwargs)
        return x + (self.drop(y) if self.drop is not None else y)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: KVCache | None = None, layer: int = 0, mask: torch.Tensor | None = None,
                is_causal: bool = False, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None,
                cross_cache: CrossKVCache | None = None) -> torch.Tensor:
        """Return the block's output for ``x (B, T, d_model)``.

        ``rope``, ``cache``, ``layer``, ``mask``, ``is_causal``: as :class:`Attention` takes them
        for the self-attention; ``memory (B, S, d)``, ``memory_mask`` (broadcastable to
        ``(B, heads, T, S)``) and ``cross_cache``: the cross-attention's encoder output, its
        mask and cache.
        """
        x = self._residual(x, self.norm1, self.attn, rope, cache, layer, mask, is_causal)
        if self.cross_attn is not None:
            x = self._residual(x, self.norm_cross, self.cross_attn, None, cross_cache, layer, memory_mask,
                               False, memory)
        return self._residual(x, self.norm2, self.mlp)
