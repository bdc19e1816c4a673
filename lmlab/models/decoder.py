"""The decoder-only Transformer: GPT-2 and LLaMA are this one class with different configs.

Pre-norm blocks ``x + attn(norm(x))``, ``x + mlp(norm(x))``, a final norm and a linear
head (optionally tied to the token embedding). The config picks the norm (LayerNorm /
RMSNorm), the MLP (GELU / SwiGLU), the positions (learned / sinusoidal / RoPE), the
number of KV heads (MHA / GQA / MQA) and biases; :mod:`lmlab.models.presets` names the
usual combinations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmlab.config import DictConfig
from lmlab.errors import LmlabError
from lmlab.nn.attention import Attention, KVCache, causal_mask
from lmlab.nn.block import BlockSpec, TransformerBlock, derive_head_dim
from lmlab.nn.infini import InfiniAttention, InfiniState, run_segments
from lmlab.nn.linear import Linear
from lmlab.nn.losses import LogitsWorkspace, linear_cross_entropy, linear_token_logprobs, token_cross_entropy
from lmlab.nn.mla import DECODE_PATHS, MLACache, MultiHeadLatentAttention
from lmlab.nn.mlp import swiglu_hidden
from lmlab.nn.norms import LayerNorm, RMSNorm, build_norm
from lmlab.nn.positions import LearnedPositions, RotaryEmbedding, SinusoidalPositions, rope_type

_CHOICES = {"norm": ("layernorm", "rmsnorm"), "mlp": ("gelu", "swiglu"),
            "pos": ("learned", "rope", "sinusoidal"), "gelu_approx": ("tanh", "none"),
            "attn": ("mha", "mla", "infini"), "memory_rule": ("linear", "delta")}
# Fields of one attention kind only: left out of saved configs while they hold their default,
# so the configs of models without them (and the checkpoints they resume from) stay as they were.
_OPTIONAL_FIELDS = {"block_positions": False, "attn": "mha", "q_lora_rank": None, "kv_lora_rank": None,
                    "qk_rope_head_dim": None, "qk_nope_head_dim": None, "v_head_dim": None,
                    "segment_len": None, "memory_rule": "linear", "bptt_segments": None,
                    "memory_scale": False}


@dataclass
class DecoderConfig(DictConfig):
    """Shape and variant of a decoder-only Transformer.

    ``n_kv_heads``, ``d_ff`` and ``head_dim`` left as None are derived: ``n_head``,
    ``4 * d_model`` (GELU) or LLaMA's ``8/3 * d_model`` rounded up to 64 (SwiGLU), and
    ``d_model // n_head``. ``rope_scaling`` takes Hugging Face's dict
    (``{"rope_type": "llama3", "factor": ..., ...}`` or ``{"rope_type": "linear", "factor": ...}``).
    ``block_positions`` adds GLM's learned block-position embedding (Du et al. 2022), the
    second of its 2-D positions, for blank infilling.
    """

    vocab_size: int = 50304
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_kv_heads: int | None = None
    d_model: int = 768
    d_ff: int | None = None
    head_dim: int | None = None
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu"
    gelu_approx: str = "tanh"
    pos: str = "learned"
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    bias: bool = True
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    block_positions: bool = False  # GLM's second (block) position embedding for blank infilling
    # attention kind: "mha" (MHA/GQA/MQA by n_kv_heads), "mla" (DeepSeek-V2), "infini" (Munkhdalai 2024)
    attn: str = "mha"
    # MLA (names as Hugging Face's DeepseekV3Config): d_c' (None: uncompressed queries, as
    # V2-Lite), d_c, d_h^R, the non-rotary query/key width and the value width per head.
    q_lora_rank: int | None = None
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    qk_nope_head_dim: int | None = None
    v_head_dim: int | None = None
    # Infini-attention: segment length N, memory update rule, segments gradients flow through
    # (None: all segments of a training sequence).
    segment_len: int | None = None
    memory_rule: str = "linear"
    bptt_segments: int | None = None
    # a learned per-KV-head scale of the memory's queries and keys before ELU+1 (sharper memory
    # reads; not in the paper: see nn/infini.py)
    memory_scale: bool = False

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise LmlabError(f"model {name}={getattr(self, name)!r} is not one of {', '.join(choices)}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
            if int(getattr(self, name)) < 1:
                raise LmlabError(f"model {name} must be a positive integer, got {getattr(self, name)}")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_head
        if self.n_kv_heads < 1 or self.n_head % self.n_kv_heads:
            raise LmlabError(f"n_head={self.n_head} must be a multiple of n_kv_heads={self.n_kv_heads}; "
                             "pick n_kv_heads among its divisors (1 = MQA, n_head = MHA)")
        if self.head_dim is None:
            self.head_dim = derive_head_dim(self.d_model, self.n_head)
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model if self.mlp == "gelu" else swiglu_hidden(self.d_model, 64)
        if self.pos == "rope":
            if self.head_dim % 2 and self.attn != "mla":  # MLA rotates qk_rope_head_dim (checked there)
                raise LmlabError(f"RoPE needs an even head_dim, got {self.head_dim}; "
                                 "change d_model or n_head")
            rope_type(self.rope_scaling)
        if not 0.0 <= self.dropout < 1.0:
            raise LmlabError(f"dropout={self.dropout} must be in [0, 1)")
        if self.attn == "mla":
            self._check_mla()
        elif self.attn == "infini":
            self._check_infini()

    def _check_mla(self) -> None:
        """Validate (and complete) the MLA fields: d_c, d_h^R (even), the per-head widths."""
        if self.pos != "rope":
            raise LmlabError("attn=mla uses decoupled RoPE; set pos=rope")
        if self.qk_nope_head_dim is None:
            self.qk_nope_head_dim = self.head_dim
        if self.v_head_dim is None:
            self.v_head_dim = self.qk_nope_head_dim
        if self.qk_rope_head_dim is None:
            self.qk_rope_head_dim = max(2, self.head_dim // 2)
        if self.kv_lora_rank is None:
            self.kv_lora_rank = 4 * self.head_dim
        for name in ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"):
            if int(getattr(self, name)) < 1:
                raise LmlabError(f"MLA {name} must be a positive integer, got {getattr(self, name)}")
        if self.q_lora_rank is not None and self.q_lora_rank < 1:
            raise LmlabError(f"MLA q_lora_rank must be a positive integer or null, got {self.q_lora_rank}")
        if self.qk_rope_head_dim % 2:
            raise LmlabError(f"MLA qk_rope_head_dim (d_h^R) must be even for RoPE, "
                             f"got {self.qk_rope_head_dim}")
        if self.n_kv_heads != self.n_head:
            raise LmlabError(f"MLA has one key and value per query head; n_kv_heads={self.n_kv_heads} "
                             f"must equal n_head={self.n_head} (leave n_kv_heads unset)")

    def _check_infini(self) -> None:
        """Validate the Infini-attention fields: a segment length that divides the block."""
        if self.segment_len is None or self.segment_len < 1:
            raise LmlabError(f"attn=infini needs a positive segment_len, got {self.segment_len}")
        if self.block_size % self.segment_len:
            raise LmlabError(f"segment_len={self.segment_len} does not divide block_size={self.block_size}; "
                             "pick a segment_len among its divisors")
        if self.bptt_segments is not None and self.bptt_segments < 1:
            raise LmlabError(f"bptt_segments must be a positive integer or null, got {self.bptt_segments}")
        if self.pos != "rope":
            raise LmlabError(f"attn=infini positions tokens within each segment by RoPE; set pos=rope "
                             f"(got pos={self.pos})")
        if self.block_positions:
            raise LmlabError("attn=infini does not take GLM's block_positions; leave block_positions false")

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a dict; the fields of one attention kind (and GLM's
        ``block_positions``) only when set, so the saved configs of models without them (and
        the checkpoints they resume from) stay as they were."""
        values = super().to_dict()
        for name, default in _OPTIONAL_FIELDS.items():
            if values[name] == default:
                del values[name]
        return values



def build_attention(cfg: DecoderConfig) -> nn.Module:
    """Return one layer's self-attention for the config's ``attn`` kind. Every kind is called
    as :class:`~lmlab.nn.attention.Attention` is, ``(x, rope, cache, layer, mask, is_causal)``,
    with the cache that :meth:`Decoder.new_kv_cache` makes for it."""
    if cfg.attn == "mha":
        return Attention(cfg.d_model, cfg.n_head, cfg.n_kv_heads, cfg.head_dim, cfg.bias, cfg.dropout)
    if cfg.attn == "mla":
        return MultiHeadLatentAttention(cfg.d_model, cfg.n_head, cfg.kv_lora_rank, cfg.qk_rope_head_dim,
                                        cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.q_lora_rank, cfg.bias,
                                        cfg.dropout)
    if cfg.attn == "infini":
        return InfiniAttention(cfg.d_model, cfg.n_head, cfg.n_kv_heads, cfg.head_dim, cfg.segment_len,
                               cfg.memory_rule, cfg.bias, cfg.dropout, memory_scale=cfg.memory_scale)
    raise LmlabError(f"unknown attention kind attn={cfg.attn!r}; choose one of {', '.join(_CHOICES['attn'])}")


def block_spec(cfg: DecoderConfig) -> BlockSpec:
    """Return the pre-norm block of a decoder config: GELU MLP (tanh or exact) or SwiGLU."""
    act = "silu" if cfg.mlp == "swiglu" else ("gelu_tanh" if cfg.gelu_approx == "tanh" else "gelu")
    return BlockSpec(cfg.d_model, cfg.n_head, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff, norm=cfg.norm,
                     norm_eps=cfg.norm_eps, norm_bias=cfg.bias, bias=cfg.bias, act=act,
                     gated=cfg.mlp == "swiglu", dropout=cfg.dropout)


class Decoder(nn.Module):
    """A decoder-only Transformer language model: token ids ``(B, T)`` -> logits ``(B, T, V)``."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = cfg = config
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb: nn.Module | None = None
        self.rope: RotaryEmbedding | None = None
        if cfg.pos == "learned":
            self.pos_emb = LearnedPositions(cfg.block_size, cfg.d_model)
        elif cfg.pos == "sinusoidal":
            self.pos_emb = SinusoidalPositions(cfg.block_size, cfg.d_model)
        else:
            rope_dim = cfg.qk_rope_head_dim if cfg.attn == "mla" else cfg.head_dim
            # Infini-attention's positions restart in every segment
            rope_len = cfg.segment_len if cfg.attn == "infini" else cfg.block_size
            self.rope = RotaryEmbedding(rope_dim, rope_len, cfg.rope_theta, cfg.rope_scaling)
        if cfg.block_positions:
            self.block_pos_emb = LearnedPositions(cfg.block_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else None
        self.blocks = nn.ModuleList(TransformerBlock(block_spec(cfg), build_attention(cfg))
                                    for _ in range(cfg.n_layer))
        self.norm_f = build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.gradient_checkpointing = False
        self.fused_loss = True  # forward(idx, targets=...) returns the loss (see causal_lm_loss)
        self._logits_workspace = LogitsWorkspace()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: weights N(0, init_std), biases 0, norms 1; residual output projections
        scaled by ``1/sqrt(2 n_layer)`` so the residual stream's variance does not grow with depth."""
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                residual = name.endswith(("attn.proj", "mlp.proj", "mlp.w2"))
                scale = 1 / math.sqrt(2 * self.config.n_layer) if residual else 1.0
                nn.init.normal_(module.weight, 0.0, std * scale)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, LearnedPositions):
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, (LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        """Return the number of parameters (tied weights once); ``non_embedding`` leaves out the
        token and position embeddings and an untied output head (Kaplan et al.'s N)."""
        params = {id(p): p for p in self.parameters()}
        n = sum(p.numel() for p in params.values())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if isinstance(self.pos_emb, LearnedPositions):
                n -= self.pos_emb.weight.numel()
            if self.config.block_positions:
                n -= self.block_pos_emb.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Return training FLOPs per token (forward + backward) at context ``seq_len``:
        ``6 N + 12 n_layer n_head head_dim seq_len`` (PaLM, appendix B), where N counts the
        non-embedding parameters plus the output head (a matmul even when tied)."""
        c = self.config
        n = self.num_params(non_embedding=True) + c.vocab_size * c.d_model
        if c.attn == "mla":  # scores over d_nope + d_h^R, values of v_head_dim: 6 (d_qk + d_v) per head
            qk_v = c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim
            return 6.0 * n + 6.0 * c.n_layer * c.n_head * qk_v * seq_len
        return 6.0 * n + 12.0 * c.n_layer * c.n_head * c.head_dim * seq_len

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in the backward pass (less memory, ~30% more compute)."""
        self.gradient_checkpointing = bool(enabled)

    def set_mla_decode(self, path: str) -> None:
        """Pick how an MLA model attends over its cache when decoding: ``"absorbed"`` (the default,
        faster) or ``"naive"`` (see :mod:`lmlab.nn.mla`); both give the same outputs. Raises
        LmlabError for other attention kinds or paths."""
        if self.config.attn != "mla":
            raise LmlabError(f"--mla-decode/set_mla_decode applies to MLA models (attn=mla); this model has "
                             f"attn={self.config.attn}; drop the option")
        if path not in DECODE_PATHS:
            raise LmlabError(f"MLA decode path {path!r} is not one of {', '.join(DECODE_PATHS)}")
        for block in self.blocks:
            block.attn.decode = path

    def new_kv_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> KVCache | MLACache | InfiniState:
        """Return an empty preallocated cache for ``batch_size`` rows of up to ``max_len`` (default
        ``block_size``) positions, in the model's dtype and device unless given: a :class:`KVCache`,
        an :class:`MLACache` (latents only) for MLA, or for attn=infini an :class:`InfiniState`
        (memory plus one segment, for any length: ``max_len`` is not used)."""
        c = self.config
        w = self.tok_emb.weight
        if c.attn == "mla":
            return MLACache(c.n_layer, batch_size, max_len or c.block_size, c.kv_lora_rank,
                            c.qk_rope_head_dim, dtype or w.dtype, device or w.device)
        if c.attn == "infini":
            return InfiniState(c.n_layer, batch_size, c.n_kv_heads, c.head_dim, c.segment_len,
                               dtype or w.dtype, device or w.device)
        return KVCache(c.n_layer, batch_size, c.n_kv_heads, max_len or c.block_size, c.head_dim,
                       dtype or w.dtype, device or w.device)

    def forward(self, idx: torch.Tensor, kv_cache: KVCache | None = None,
                positions: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                last_only: bool = False, targets: torch.Tensor | None = None,
                block_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Return next-token logits ``(B, T, V)`` for token ids ``idx (B, T)``.

        With ``targets (B, T)`` (next-token ids, -100 ignored) return the mean cross-entropy
        instead; in fp32 the output layer and the loss are fused (no separate logits tensor).

        ``kv_cache``: a cache from :meth:`new_kv_cache`; the T tokens continue the
        ``kv_cache.length`` positions already in it, and are appended to it.
        ``positions (B, T)``: position ids when they are not ``length..length+T-1`` (left
        padding). ``attention_mask (B, length + T)``: 1/True for real tokens, 0 for padding; or a
        boolean ``(B, T, length + T)`` mask used as it is (True = may attend; GLM's part A
        bidirectional, part B causal). ``block_positions (B, T)``: GLM's block position ids
        (models with ``block_positions``; None = 0, as for part A and plain text).
        ``last_only``: compute logits for the last position only (``(B, 1, V)``).

        attn=infini reads any length (segment by segment, :func:`~lmlab.nn.infini.run_segments`):
        ``kv_cache`` is its :class:`InfiniState`, ``positions`` are not used (positions count
        within each segment) and ``attention_mask`` may only mark left padding ``(B, length + T)``.
        """
        if self.config.attn == "infini":
            return self._forward_infini(idx, kv_cache, attention_mask, last_only, targets)
        x = self._trunk(idx, kv_cache, positions, attention_mask, block_positions)
        if last_only:
            x = x[:, -1:]
        return self._head(x, targets)

    def target_logprobs(self, idx: torch.Tensor, targets: torch.Tensor, select: torch.Tensor,
                        temperature: float = 1.0) -> torch.Tensor:
        """Return ``(B, T)`` fp32 log-probabilities of ``targets[b, t]`` as the token after
        ``idx[b, :t + 1]`` under ``logits / temperature``, where ``select (B, T)`` is True, 0 elsewhere.

        Only the selected positions go through the output layer and the softmax (a response's
        tokens, not its prompt or the padding), fused in fp32 as the training loss is. ``idx`` is
        right-padded (padding after every real token needs no mask in a causal model).
        """
        rows = self.hidden_states(idx)[select]
        if temperature != 1.0:
            rows = rows / temperature  # (h / T) W^T = (h W^T) / T
        picked = targets[select]
        head = self.lm_head
        plain = type(head) is Linear and head.bias is None and not head._forward_hooks \
            and not head._forward_pre_hooks  # a LoRA on the output layer works through a hook
        fused = (plain and rows.dtype == torch.float32
                 and head.weight.dtype == torch.float32 and not torch.is_autocast_enabled(idx.device.type))
        if fused:
            logp = linear_token_logprobs(rows, head.weight, picked, self._logits_workspace)
        else:  # autocast, another dtype, or an output layer adapted by a tuning method
            logp = -token_cross_entropy(head(rows), picked, reduction="none")
        out = torch.zeros(select.shape, dtype=torch.float32, device=idx.device)
        return out.masked_scatter(select, logp.float())

    def hidden_states(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      positions: torch.Tensor | None = None) -> torch.Tensor:
        """Return the final hidden states ``(B, T, d_model)`` of ``idx (B, T)``, after the final norm
        (what the output layer reads): the features of a task head. ``attention_mask (B, T)`` marks
        real tokens (1) and padding (0), as in :meth:`forward`."""
        if self.config.attn == "infini":
            return self.norm_f(self._infini_trunk(idx, None, attention_mask, last_only=False))
        return self.norm_f(self._trunk(idx, None, positions, attention_mask, None))

    def _trunk(self, idx: torch.Tensor, kv_cache: KVCache | None, positions: torch.Tensor | None,
               attention_mask: torch.Tensor | None, block_positions: torch.Tensor | None) -> torch.Tensor:
        """Embed ``idx`` and run the blocks; return the last block's output ``(B, T, d)`` (before the
        final norm). Shared by :meth:`forward` and :meth:`hidden_states`."""
        B, T = idx.shape
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise LmlabError(f"sequence of {start + T} tokens exceeds the model's block_size "
                             f"{self.config.block_size}; feed at most {self.config.block_size} tokens")
        if kv_cache is not None and start + T > kv_cache.max_len:
            raise LmlabError(f"KV cache holds {kv_cache.max_len} positions, {start + T} needed; "
                             "create it with a larger max_len")
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            if positions is None:
                learned = isinstance(self.pos_emb, LearnedPositions)
                table = self.pos_emb.weight if learned else self.pos_emb.table
                x = x + table[start:start + T]
            else:
                x = x + self.pos_emb(positions)
        if self.config.block_positions:
            x = x + (self.block_pos_emb.weight[0] if block_positions is None
                     else self.block_pos_emb(block_positions))
        rope = self.rope(start, T, positions) if self.rope is not None else None
        if self.drop is not None:
            x = self.drop(x)
        mask, is_causal = self._mask(B, T, start, attention_mask, x.device)
        for i, block in enumerate(self.blocks):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, rope, kv_cache, i, mask, is_causal, use_reentrant=False)
            else:
                x = block(x, rope, kv_cache, i, mask, is_causal)
        if kv_cache is not None:
            kv_cache.length = start + T
        return x

    def _forward_infini(self, idx: torch.Tensor, state: InfiniState | None,
                        attention_mask: torch.Tensor | None, last_only: bool,
                        targets: torch.Tensor | None) -> torch.Tensor:
        """Infini-attention's forward: the blocks run segment-major over any length, carrying the
        memory in ``state`` (a fresh one per call without a cache); see :meth:`forward`."""
        x = self._infini_trunk(idx, state, attention_mask, last_only)
        if last_only:
            x = x[:, -1:]
        return self._head(x, targets)

    def _infini_trunk(self, idx: torch.Tensor, state: InfiniState | None,
                      attention_mask: torch.Tensor | None, last_only: bool) -> torch.Tensor:
        """The blocks of :meth:`_forward_infini`; returns the last block's output (before the final
        norm; with ``last_only``, only the last segment's rows are meaningful)."""
        B, T = idx.shape
        if attention_mask is not None and attention_mask.dim() != 2:
            raise LmlabError("attn=infini takes only a (B, T) padding mask, not a (B, T, T) attention mask")
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            raise LmlabError("gradient checkpointing would write Infini-attention's memory twice; "
                             "train attn=infini without --grad-checkpointing")
        if state is None:
            state = self.new_kv_cache(B)
        valid = (None if attention_mask is None
                 else attention_mask[:, -T:].to(device=idx.device, dtype=torch.bool))
        # last_only streams the input a segment at a time, so reading holds O(segment) activations
        step = self.config.segment_len if last_only else max(T, 1)
        for a in range(0, T, step):
            x = self.tok_emb(idx[:, a:a + step])
            if self.drop is not None:
                x = self.drop(x)
            x = run_segments(self.blocks, x, state, self.rope, self.config.bptt_segments,
                             None if valid is None else valid[:, a:a + step])
        state.length += T
        return x

    def _head(self, x: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """Return the logits of the final hidden states ``x``, or with ``targets`` the mean loss."""
        x = self.norm_f(x)
        if targets is None:
            return self.lm_head(x)
        w = self.lm_head.weight
        fp32 = x.dtype == torch.float32 and w.dtype == torch.float32
        if fp32 and not torch.is_autocast_enabled(x.device.type):
            return linear_cross_entropy(x, w, targets, self._logits_workspace)
        return token_cross_entropy(self.lm_head(x), targets)

    @staticmethod
    def _mask(B: int, T: int, start: int, attention_mask: torch.Tensor | None,
              device: torch.device) -> tuple[torch.Tensor | None, bool]:
        """Return ``(mask, is_causal)`` for SDPA: no mask for one query, SDPA's causal flag for
        a fresh sequence, a lower-right causal mask after cached positions, plus padding; a
        (B, T, L) mask as it is."""
        L = start + T
        if attention_mask is not None and attention_mask.dim() == 3:
            return attention_mask[:, None, :, :L].to(device=device, dtype=torch.bool), False
        if attention_mask is None:
            if T == 1:
                return None, False
            if start == 0:
                return None, True
            return causal_mask(T, L, device), False
        valid = attention_mask[:, :L].to(device=device, dtype=torch.bool)
        if T == 1:
            return valid[:, None, None, :], False
        causal = causal_mask(T, L, device)
        # A padding query sees only itself, so no row is fully masked (which would give NaN).
        own = torch.eye(T, dtype=torch.bool, device=device)
        own = torch.cat([torch.zeros(T, start, dtype=torch.bool, device=device), own], dim=1)
        return ((causal & valid[:, None, :]) | own)[:, None], False
