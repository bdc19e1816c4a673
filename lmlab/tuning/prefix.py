"""Prefix tuning (Li & Liang 2021): trained keys and values that every self-attention layer
prepends to its own, so every query may attend to them (:mod:`lmlab.nn.attention`'s ``prefix``).

While training, the prefixes of all layers come from one reparameterising MLP, as in the paper:
``P = MLP(P')`` with ``P' (n_prefix, d_model)`` an embedding, ``MLP = Linear(d, hidden) -> tanh ->
Linear(hidden, n_layer * 2 * n_kv_heads * head_dim)``; each layer computes its own rows of the
last product. :func:`fold_prefix` evaluates the MLP once and keeps only the resulting tensors
(:class:`PlainPrefix`), which is all inference needs. With ``prefix_hidden=0`` the prefixes are
trained directly. Layers of another attention kind (MLA, Infini-attention) are refused.
"""

from __future__ import annotations

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.nn.attention import Attention
from lmlab.tuning.adapters import transformer_blocks
from lmlab.tuning.module import TuningModule
from lmlab.tuning.options import TuningOptions

ENCODER_ATTR = "prefix_encoder"  # where the shared MLP lives on the language model


class PrefixEncoder(TuningModule):
    """The reparameterisation shared by all layers: embedding -> Linear -> tanh -> Linear."""

    def __init__(self, n_prefix: int, d_model: int, hidden: int, n_layer: int, width: int):
        super().__init__()
        self.width = width  # 2 * n_kv_heads * head_dim per layer
        self.embedding = nn.Embedding(n_prefix, d_model)
        self.hidden = nn.Linear(d_model, hidden)
        self.out = nn.Linear(hidden, n_layer * width)

    def layer_kv(self, layer: int) -> torch.Tensor:
        """Return the prefix of ``layer`` as ``(n_prefix, 2 * n_kv_heads * head_dim)``: keys then values."""
        h = torch.tanh(self.hidden(self.embedding.weight))
        rows = slice(layer * self.width, (layer + 1) * self.width)
        return nn.functional.linear(h, self.out.weight[rows], self.out.bias[rows])


class LayerPrefix(TuningModule):
    """One layer's prefix read from the shared :class:`PrefixEncoder` (held by reference, so its
    parameters are registered once, on the language model)."""

    def __init__(self, encoder: PrefixEncoder, layer: int, n_kv_heads: int, head_dim: int):
        super().__init__()
        self._encoder = (encoder,)  # a tuple: not a child module
        self.layer, self.n_kv_heads, self.head_dim = layer, n_kv_heads, head_dim

    def kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the keys and values ``(1, n_kv_heads, P, head_dim)`` each."""
        kv = self._encoder[0].layer_kv(self.layer)
        P = kv.shape[0]
        k, v = kv.view(P, 2, self.n_kv_heads, self.head_dim).permute(1, 2, 0, 3).unsqueeze(1)
        return k, v

    def forward(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Return ``(keys, values)`` for the attention, None when disabled."""
        return self.kv() if self.enabled and self._encoder[0].enabled else None


class PlainPrefix(TuningModule):
    """One layer's prefix as plain tensors ``k, v (1, n_kv_heads, P, head_dim)``."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        super().__init__()
        self.k = nn.Parameter(k.detach().clone())
        self.v = nn.Parameter(v.detach().clone())

    def forward(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Return ``(keys, values)`` for the attention, None when disabled."""
        return (self.k, self.v) if self.enabled else None


def prefix_attentions(model: nn.Module) -> list[tuple[str, Attention]]:
    """Return ``(name, attention)`` of the self-attention of every block; raise LmlabError for
    attention kinds prefix tuning does not cover."""
    found = []
    for name, block in transformer_blocks(model, "prefix"):
        if type(block.attn) is not Attention:
            raise LmlabError(f"prefix tuning prepends keys and values to standard attention; {name}.attn is "
                             f"{type(block.attn).__name__} (MLA caches latents, Infini-attention compresses "
                             "segments); use LoRA or adapters for this model")
        found.append((f"{name}.attn", block.attn))
    return found


def apply_prefix(model: nn.Module, opts: TuningOptions) -> list[str]:
    """Give every self-attention of ``model`` (its language model) a trained prefix; return the
    attention names."""
    attns = prefix_attentions(model)
    first = attns[0][1]
    w = first.proj.weight
    d_model = w.shape[0]
    widths = {2 * a.n_kv_heads * a.head_dim for _, a in attns}
    if len(widths) > 1:
        raise LmlabError("prefix tuning needs the same key/value width in every layer; this model's differ")
    width = widths.pop()
    if opts.prefix_hidden > 0:
        encoder = PrefixEncoder(opts.n_prefix, d_model, opts.prefix_hidden, len(attns), width)
        encoder.to(device=w.device, dtype=w.dtype)
        setattr(model, ENCODER_ATTR, encoder)
        for i, (_, a) in enumerate(attns):
            a.prefix = LayerPrefix(encoder, i, a.n_kv_heads, a.head_dim)
    else:
        gen = torch.Generator().manual_seed(0)
        for _, a in attns:
            shape = (1, a.n_kv_heads, opts.n_prefix, a.head_dim)
            k, v = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
            a.prefix = PlainPrefix(k, v).to(device=w.device, dtype=w.dtype)
    return [n for n, _ in attns]


def fold_prefix(model: nn.Module) -> int:
    """Replace the MLP-made prefixes of ``model`` (its language model) by the tensors the MLP
    gives now, and drop the MLP; return how many layers were folded (0 when already plain)."""
    folded = 0
    for _, a in prefix_attentions(model):
        if isinstance(a.prefix, LayerPrefix):
            with torch.no_grad():
                k, v = a.prefix.kv()
            enabled = a.prefix.enabled
            a.prefix = PlainPrefix(k, v)
            a.prefix.enabled = enabled
            folded += 1
    if hasattr(model, ENCODER_ATTR):
        delattr(model, ENCODER_ATTR)
    return folded
