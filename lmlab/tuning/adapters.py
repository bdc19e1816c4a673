"""Bottleneck adapters: Houlsby et al. (2019), after the attention and the feed-forward
sublayers, and the Pfeiffer et al. (2021) variant, after the feed-forward sublayer only.

An adapter maps a sublayer's output ``h`` to ``h + up(act(down(h)))`` (``d -> bottleneck -> d``),
before the block's residual add (and, in post-norm blocks, before its norm). It is attached to
the sublayer as its child ``adapter`` with a forward hook on the sublayer, so every block of
every Transformer family (decoders, encoders, encoder-decoders; also cross-attention in
Houlsby's variant) gets it without a forked class. Both projections start from N(0, 1e-3) with
zero biases (Houlsby's near-identity initialisation): the tuned model starts within about
1e-6 of the base.
"""

from __future__ import annotations

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.nn.block import TransformerBlock
from lmlab.nn.linear import Linear
from lmlab.nn.mlp import activation
from lmlab.tuning.module import TuningModule
from lmlab.tuning.options import TuningOptions

INIT_STD = 1e-3
# the sublayers of a block each variant adapts
SUBLAYERS = {"houlsby": ("attn", "cross_attn", "mlp"), "pfeiffer": ("mlp",)}
TRANSFORMER_FAMILIES = "decoder (GPT-2, LLaMA, MLA, Infini), encoder (BERT, RoBERTa), encdec (T5, BART)"


class Bottleneck(TuningModule):
    """``h -> up(act(down(h)))``, the adapter's update (the hook adds it to ``h``)."""

    def __init__(self, d_model: int, bottleneck: int, act: str = "relu"):
        super().__init__()
        self.down = Linear(d_model, bottleneck)
        self.up = Linear(bottleneck, d_model)
        self.act = act
        for lin in (self.down, self.up):
            nn.init.normal_(lin.weight, 0.0, INIT_STD)
            nn.init.zeros_(lin.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Return the update for ``h (..., d_model)``."""
        return self.up(activation(self.act, self.down(h)))


def _adapter_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    adapter = module.adapter
    return output + adapter(output) if adapter.enabled else output


def transformer_blocks(model: nn.Module, method: str) -> list[tuple[str, TransformerBlock]]:
    """Return ``(name, block)`` of every Transformer block; raise LmlabError when there is none."""
    blocks = [(n, m) for n, m in model.named_modules() if isinstance(m, TransformerBlock)]
    if not blocks:
        raise LmlabError(f"{method} tuning needs a Transformer; a {type(model).__name__} has no Transformer "
                         f"blocks (families with them: {TRANSFORMER_FAMILIES}); use LoRA or full fine-tuning")
    return blocks


def apply_adapters(model: nn.Module, opts: TuningOptions) -> tuple[list[str], list]:
    """Attach an adapter after each sublayer the variant (``opts.method``: houlsby or pfeiffer)
    adapts in every Transformer block; return the adapted sublayer names and the hook handles."""
    names, handles = [], []
    for bname, block in transformer_blocks(model, opts.method):
        for sub in SUBLAYERS[opts.method]:
            layer = getattr(block, sub, None)
            if layer is None:
                continue
            d_model = block.norm2.weight.shape[0]
            w = next(block.parameters())
            adapter = Bottleneck(d_model, opts.bottleneck, opts.adapter_act)
            layer.adapter = adapter.to(device=w.device, dtype=w.dtype)
            handles.append(layer.register_forward_hook(_adapter_hook))
            names.append(f"{bname}.{sub}")
    return names, handles
