"""lmlab.nn: the building blocks shared by every Transformer in the lab."""

from lmlab.nn.attention import Attention, KVCache, causal_mask
from lmlab.nn.mlp import GeluMLP, SwiGLU, swiglu_hidden
from lmlab.nn.norms import LayerNorm, RMSNorm, build_norm
from lmlab.nn.positions import LearnedPositions, RotaryEmbedding, SinusoidalPositions, apply_rope

__all__ = ["Attention", "KVCache", "causal_mask", "GeluMLP", "SwiGLU", "swiglu_hidden", "LayerNorm",
           "RMSNorm", "build_norm", "LearnedPositions", "RotaryEmbedding", "SinusoidalPositions",
           "apply_rope"]
