"""lmlab.nn: the building blocks shared by every Transformer in the lab."""

from lmlab.nn.attention import Attention, CrossKVCache, KVCache, causal_mask, padding_mask
from lmlab.nn.block import BlockSpec, TransformerBlock
from lmlab.nn.mlp import MLP, GatedMLP, swiglu_hidden
from lmlab.nn.norms import LayerNorm, RMSNorm, build_norm
from lmlab.nn.positions import (
                                LearnedPositions,
                                RelativePositionBias,
                                RotaryEmbedding,
                                SinusoidalPositions,
                                apply_rope,
)

__all__ = ["Attention", "CrossKVCache", "KVCache", "causal_mask", "padding_mask", "BlockSpec",
           "TransformerBlock", "MLP", "GatedMLP", "swiglu_hidden", "LayerNorm", "RMSNorm", "build_norm",
           "LearnedPositions", "RelativePositionBias", "RotaryEmbedding", "SinusoidalPositions", "apply_rope"]
