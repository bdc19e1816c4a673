"""The decoder family's presets: the GPT-2 and LLaMA families, from CPU toys to real shapes.

``vocab_size`` and ``block_size`` are usually overridden from the prepared data
(``get_preset("llama-small", vocab_size=4096, block_size=256)``).
"""

from __future__ import annotations

from typing import Any

_GPT2 = dict(norm="layernorm", norm_eps=1e-5, mlp="gelu", gelu_approx="tanh", pos="learned", bias=True,
             tie_embeddings=True)
_LLAMA = dict(norm="rmsnorm", norm_eps=1e-5, mlp="swiglu", pos="rope", bias=False)
# DeepSeek-V2/V3 attention (MLA) on the LLaMA body; dense SwiGLU MLPs (DeepSeek's MoE is out of scope).
_DEEPSEEK = dict(norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", pos="rope", bias=False, attn="mla")
_LLAMA31_ROPE = dict(rope_type="llama3", low_freq_factor=1.0, high_freq_factor=4.0,
                     original_max_position_embeddings=8192)

PRESETS: dict[str, dict[str, Any]] = {
    # GPT-2: learned positions, LayerNorm, GELU (tanh), biases, tied head.
    "gpt2-tiny": dict(_GPT2, vocab_size=4096, block_size=128, n_layer=2, n_head=4, d_model=64),
    "gpt2-small": dict(_GPT2, vocab_size=4096, block_size=512, n_layer=6, n_head=8, d_model=256),
    "gpt2-124m": dict(_GPT2, vocab_size=50257, block_size=1024, n_layer=12, n_head=12, d_model=768),
    "gpt2-350m": dict(_GPT2, vocab_size=50257, block_size=1024, n_layer=24, n_head=16, d_model=1024),
    "gpt2-774m": dict(_GPT2, vocab_size=50257, block_size=1024, n_layer=36, n_head=20, d_model=1280),
    "gpt2-1.5b": dict(_GPT2, vocab_size=50257, block_size=1024, n_layer=48, n_head=25, d_model=1600),
    # LLaMA: RMSNorm, SwiGLU, RoPE, GQA, no biases.
    "llama-tiny": dict(_LLAMA, vocab_size=4096, block_size=256, n_layer=2, n_head=4, n_kv_heads=2,
                       d_model=64, tie_embeddings=True),
    # Infini-attention (Munkhdalai et al. 2024): llama-tiny's shape with a compressive memory per
    # head across segments of 64 tokens; reads any length with constant memory.
    "infini-tiny": dict(_LLAMA, vocab_size=4096, block_size=256, n_layer=2, n_head=4, d_model=64,
                        tie_embeddings=True, attn="infini", segment_len=64),
    "llama-small": dict(_LLAMA, vocab_size=4096, block_size=512, n_layer=6, n_head=8, n_kv_heads=4,
                        d_model=256, tie_embeddings=True),
    "llama2-7b": dict(_LLAMA, vocab_size=32000, block_size=4096, n_layer=32, n_head=32, n_kv_heads=32,
                      d_model=4096, d_ff=11008, rope_theta=10000.0, tie_embeddings=False),
    "llama-1b": dict(_LLAMA, vocab_size=128256, block_size=131072, n_layer=16, n_head=32, n_kv_heads=8,
                     d_model=2048, d_ff=8192, rope_theta=500000.0,
                     rope_scaling=dict(_LLAMA31_ROPE, factor=32.0), tie_embeddings=True),
    "llama-3b": dict(_LLAMA, vocab_size=128256, block_size=131072, n_layer=28, n_head=24, n_kv_heads=8,
                     d_model=3072, d_ff=8192, rope_theta=500000.0,
                     rope_scaling=dict(_LLAMA31_ROPE, factor=32.0), tie_embeddings=True),
    "llama-8b": dict(_LLAMA, vocab_size=128256, block_size=131072, n_layer=32, n_head=32, n_kv_heads=8,
                     d_model=4096, d_ff=14336, rope_theta=500000.0,
                     rope_scaling=dict(_LLAMA31_ROPE, factor=8.0), tie_embeddings=False),
    # DeepSeek (MLA): a latent c_KV of kv_lora_rank and one shared rotary key of qk_rope_head_dim
    # cached per token; deepseek-tiny also compresses the queries (q_lora_rank, as V2/V3).
    "deepseek-tiny": dict(_DEEPSEEK, vocab_size=4096, block_size=256, n_layer=2, n_head=4, d_model=64,
                          q_lora_rank=32, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16,
                          v_head_dim=16, tie_embeddings=True),
    # DeepSeek-V2-Lite's attention and shape (arXiv 2405.04434, App. B), with a DENSE SwiGLU of its
    # first layer's width (d_ff 10944) in every layer: its MoE layers (64 routed + 2 shared experts)
    # are out of scope, so this has fewer parameters than its 15.7B. block_size is its pre-YaRN
    # context (4096): YaRN RoPE scaling (its 163840-token config) is not supported.
    "deepseek-v2-lite": dict(_DEEPSEEK, vocab_size=102400, block_size=4096, n_layer=27, n_head=16,
                             d_model=2048, d_ff=10944, q_lora_rank=None, kv_lora_rank=512,
                             qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, rope_theta=10000.0,
                             tie_embeddings=False),
}

