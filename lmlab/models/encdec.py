"""The encoder-decoder Transformer: the original Transformer (Vaswani et al. 2017), T5 and BART
are this one class with different configs.

The encoder reads the source with bidirectional self-attention (padding masked); the decoder
reads the target with causal self-attention, then cross-attends to the encoder output. Both are
stacks of :class:`~lmlab.nn.block.TransformerBlock`; one token embedding serves the source, the
target and (tied) the output head. The config picks:

- positions: ``sinusoidal`` (Vaswani), ``learned`` with an index offset (BART's 2), or
  ``relative`` (T5's bucketed scalar bias, computed by the first layer and shared by all layers
  of a stack; the cross-attention has none);
- blocks: post-norm (Vaswani, BART) or pre-norm with a final norm per stack (T5), LayerNorm or
  RMSNorm, ReLU / GELU / gated GELU (T5 v1.1) feed-forward, biases or none;
- embeddings: scaled by ``sqrt(d_model)`` (Vaswani) and/or normalised (BART's
  ``layernorm_embedding``); the head tied or not, its input scaled by ``d_model**-0.5`` (T5 v1.0,
  ``scale_logits``), a fixed logits bias (BART's ``final_logits_bias``).

Sequences longer than the positions the model has are refused with learned or sinusoidal
positions (``block_size`` each for the source and the target). T5's relative positions have no
hard limit (distances beyond ``rel_max_distance`` share the last bucket), so T5 takes any length,
as Hugging Face's does; ``block_size`` is then only the default training window.
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
from lmlab.nn.attention import CrossKVCache, KVCache, causal_mask, padding_mask
from lmlab.nn.block import BlockSpec, TransformerBlock, derive_head_dim
from lmlab.nn.linear import Linear
from lmlab.nn.losses import IGNORE_INDEX, LogitsWorkspace, linear_cross_entropy, token_cross_entropy
from lmlab.nn.norms import LayerNorm, RMSNorm, build_norm
from lmlab.nn.positions import LearnedPositions, RelativePositionBias, SinusoidalPositions

ARCH = "encdec"
OBJECTIVES = ("span-corruption", "denoise")
_CHOICES = {"norm": ("layernorm", "rmsnorm"), "act": ("relu", "gelu", "gelu_tanh"),
            "pos": ("sinusoidal", "learned", "relative"), "objective": OBJECTIVES,
            "init": ("normal", "xavier", "t5")}


@dataclass
class EncDecConfig(DictConfig):
    """Shape and variant of an encoder-decoder Transformer (see the module docstring).

    ``n_dec_layer``, ``d_ff`` and ``head_dim`` left as None are derived: ``n_layer``,
    ``4 * d_model`` and ``d_model // n_head``; ``decoder_start_token_id`` None is the pad id
    (T5's convention; BART and the Transformer start from the end-of-sequence id).
    ``objective`` is the pretraining objective that fits the family (``span-corruption`` for
    T5, ``denoise`` for BART and the Transformer). ``init`` is the family's initialisation
    (:meth:`EncoderDecoder.reset_parameters`): ``normal`` N(0, init_std) (BART), ``xavier``
    (Vaswani, as fairseq) or ``t5`` (Mesh TensorFlow's fan-in scaled normal).
    """

    vocab_size: int = 32128
    block_size: int = 512  # positions of the source and of the target (a hard limit unless pos=relative)
    n_layer: int = 6  # encoder layers
    n_dec_layer: int | None = None  # decoder layers
    n_head: int = 8
    d_model: int = 512
    d_ff: int | None = None
    head_dim: int | None = None
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    post_norm: bool = True
    act: str = "relu"
    gated: bool = False
    bias: bool = True
    pos: str = "sinusoidal"
    pos_offset: int = 0  # learned positions: row of position p is p + pos_offset (BART: 2)
    rel_buckets: int = 32
    rel_max_distance: int = 128
    embed_scale: bool = False  # token embeddings times sqrt(d_model)
    embed_norm: bool = False  # a norm right after the embeddings (BART's layernorm_embedding)
    final_norm: bool = False  # a norm after each stack (pre-norm models)
    attn_scale: float | None = None  # attention score scale (None: 1/sqrt(head_dim); T5: 1)
    tie_embeddings: bool = True
    scale_logits: bool = False  # decoder output times d_model**-0.5 before the head (T5 v1.0)
    logits_bias: bool = False  # a fixed bias on the logits (BART's final_logits_bias)
    dropout: float = 0.0
    init: str = "normal"
    init_std: float = 0.02
    pad_token_id: int = 1
    eos_token_id: int = 0
    bos_token_id: int | None = None
    decoder_start_token_id: int | None = None
    objective: str = "denoise"

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise LmlabError(f"model {name}={getattr(self, name)!r} is not one of {', '.join(choices)}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model", "rel_buckets",
                     "rel_max_distance"):
            if int(getattr(self, name)) < 1:
                raise LmlabError(f"model {name} must be a positive integer, got {getattr(self, name)}")
        if self.n_dec_layer is None:
            self.n_dec_layer = self.n_layer
        if self.n_dec_layer < 1:
            raise LmlabError(f"model n_dec_layer must be a positive integer, got {self.n_dec_layer}")
        if self.head_dim is None:
            self.head_dim = derive_head_dim(self.d_model, self.n_head)
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.pos_offset < 0:
            raise LmlabError(f"pos_offset must be >= 0, got {self.pos_offset}")
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.pad_token_id
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id", "bos_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise LmlabError(f"{name}={value} is outside the vocabulary (0..{self.vocab_size - 1}); "
                                 "set it to the tokenizer's id of that token")
        if not 0.0 <= self.dropout < 1.0:
            raise LmlabError(f"dropout={self.dropout} must be in [0, 1)")

    @property
    def max_positions(self) -> int | None:
        """The most source (and target) tokens the model reads: ``block_size``; None (no limit) for
        relative positions."""
        return None if self.pos == "relative" else self.block_size


def with_special_ids(cfg: EncDecConfig, pad_id: int, eos_id: int, bos_id: int | None = None) -> EncDecConfig:
    """Return ``cfg`` with the special ids of another tokenizer, keeping the family's convention for
    the decoder's start token: the end-of-sequence id when ``cfg`` started from it (BART, the
    Transformer), else the pad id (T5)."""
    starts_at_eos = cfg.decoder_start_token_id == cfg.eos_token_id
    values = {**cfg.to_dict(), "pad_token_id": pad_id, "eos_token_id": eos_id, "bos_token_id": bos_id,
              "decoder_start_token_id": eos_id if starts_at_eos else pad_id}
    return EncDecConfig.from_dict(values)


def block_spec(cfg: EncDecConfig, cross: bool) -> BlockSpec:
    """Return the encoder (``cross=False``) or decoder (``cross=True``) block of ``cfg``."""
    return BlockSpec(cfg.d_model, cfg.n_head, cfg.n_head, cfg.head_dim, cfg.d_ff, norm=cfg.norm,
                     norm_eps=cfg.norm_eps, bias=cfg.bias, act=cfg.act, gated=cfg.gated,
                     post_norm=cfg.post_norm, cross=cross, dropout=cfg.dropout, scale=cfg.attn_scale)


class Stack(nn.Module):
    """One side of the model: its position information, embedding norm, blocks and final norm."""

    def __init__(self, cfg: EncDecConfig, decoder: bool):
        super().__init__()
        self.pos: nn.Module | None = None
        self.rel: RelativePositionBias | None = None
        if cfg.pos == "learned":
            self.pos = LearnedPositions(cfg.block_size + cfg.pos_offset, cfg.d_model)
        elif cfg.pos == "sinusoidal":
            self.pos = SinusoidalPositions(cfg.block_size, cfg.d_model)
        else:
            self.rel = RelativePositionBias(cfg.n_head, cfg.rel_buckets, cfg.rel_max_distance,
                                            bidirectional=not decoder)
        self.offset = cfg.pos_offset if cfg.pos == "learned" else 0
        self.emb_norm = build_norm(cfg.norm, cfg.d_model, cfg.norm_eps) if cfg.embed_norm else None
        n = cfg.n_dec_layer if decoder else cfg.n_layer
        self.blocks = nn.ModuleList(TransformerBlock(block_spec(cfg, decoder)) for _ in range(n))
        self.norm = build_norm(cfg.norm, cfg.d_model, cfg.norm_eps) if cfg.final_norm else None
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else None

    def embed(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Add the positions ``start..start+T-1`` to token embeddings ``x (B, T, d)``, normalise, drop out."""
        if self.pos is not None:
            table = self.pos.weight if isinstance(self.pos, LearnedPositions) else self.pos.table
            x = x + table[start + self.offset: start + self.offset + x.shape[1]]
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        return self.drop(x) if self.drop is not None else x

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the final norm (pre-norm models) and dropout to the last block's output."""
        if self.norm is None:
            return x
        x = self.norm(x)
        return self.drop(x) if self.drop is not None else x


class EncoderDecoder(nn.Module):
    """An encoder-decoder Transformer: ``model(input_ids, decoder_input_ids, attention_mask)`` ->
    logits ``(B, T_dec, V)``; with ``targets`` the mean cross-entropy over targets != -100."""

    def __init__(self, config: EncDecConfig):
        super().__init__()
        self.config = cfg = config
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Stack(cfg, decoder=False)
        self.decoder = Stack(cfg, decoder=True)
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.final_logits_bias: torch.Tensor | None
        if cfg.logits_bias:
            self.register_buffer("final_logits_bias", torch.zeros(cfg.vocab_size))
        else:
            self.final_logits_bias = None
        self.gradient_checkpointing = False
        self.fused_loss = True  # forward(..., targets=) returns the loss
        self._logits_workspace = LogitsWorkspace()
        self.reset_parameters()

    # ------------------------------------------------------------------ set-up

    def reset_parameters(self) -> None:
        """Initialise by ``config.init``; biases 0, norms 1 throughout.

        ``normal`` (BART, GPT-2): linears N(0, init_std), pre-norm residual projections scaled down
        by ``1/sqrt(2 n_layer)``. ``xavier`` (Vaswani, as fairseq): Xavier-uniform linears. ``t5``
        (Mesh TensorFlow, as Hugging Face): N(0, fan_in^-1/2) linears, queries also scaled by
        ``head_dim^-1/2`` (T5 leaves the score unscaled), the relative bias N(0, d^-1/2). The token
        embedding is N(0, 1) when the head's input is scaled down (T5 v1.0), N(0, d^-1/2) when the
        embedding is scaled up by sqrt(d) or the head is untied under ``t5``, else N(0, init_std).
        """
        c = self.config
        std = c.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and module is not self.lm_head:
                if c.init == "xavier":
                    nn.init.xavier_uniform_(module.weight)
                elif c.init == "t5":
                    nn.init.normal_(module.weight, 0.0, module.in_features ** -0.5)
                    queries = c.n_head * c.head_dim if name.endswith(("attn.qkv", "cross_attn.q")) else 0
                    with torch.no_grad():
                        module.weight[:queries].mul_(c.head_dim ** -0.5)
                else:
                    residual = not c.post_norm and name.endswith(("attn.proj", "mlp.proj", "mlp.w2"))
                    layers = c.n_dec_layer if name.startswith("decoder.") else c.n_layer
                    nn.init.normal_(module.weight, 0.0, std / math.sqrt(2 * layers) if residual else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, LearnedPositions):
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, RelativePositionBias):
                nn.init.normal_(module.weight, 0.0, c.d_model ** -0.5 if c.init == "t5" else std)
            elif isinstance(module, (LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        if c.scale_logits:
            emb_std = 1.0
        elif c.embed_scale or c.init == "t5":
            emb_std = c.d_model ** -0.5
        else:
            emb_std = std
        nn.init.normal_(self.tok_emb.weight, 0.0, emb_std)
        if not c.tie_embeddings:
            head_std = c.d_model ** -0.5 if c.init in ("t5", "xavier") else std
            nn.init.normal_(self.lm_head.weight, 0.0, head_std)
        if self.final_logits_bias is not None:
            self.final_logits_bias.zero_()

    def num_params(self, non_embedding: bool = False) -> int:
        """Return the number of parameters (tied weights once); ``non_embedding`` leaves out the
        token embedding, learned positions and an untied output head."""
        params = {id(p): p for p in self.parameters()}
        n = sum(p.numel() for p in params.values())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            for stack in (self.encoder, self.decoder):
                if isinstance(stack.pos, LearnedPositions):
                    n -= stack.pos.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int, target_len: int | None = None) -> float:
        """Return training FLOPs (forward + backward) per source token, for sources of ``seq_len``
        tokens and targets of ``target_len`` (default ``seq_len``): ``6 N`` per token that passes
        through N parameters (encoder parameters per source token; decoder parameters and the head
        per target token, the cross-attention keys/values per source token) plus the attention
        scores and sums, ``12 n_head head_dim`` per layer, query and key (PaLM, appendix B)."""
        c = self.config
        S, T = seq_len, seq_len if target_len is None else target_len
        enc = sum(p.numel() for p in self.encoder.blocks.parameters())
        dec = sum(p.numel() for p in self.decoder.blocks.parameters())
        cross_kv = sum(b.cross_attn.kv.weight.numel() for b in self.decoder.blocks)
        hd = c.n_head * c.head_dim
        total = (6.0 * (enc * S + (dec - cross_kv + c.vocab_size * c.d_model) * T + cross_kv * S)
                 + 12.0 * hd * (c.n_layer * S * S + c.n_dec_layer * (T * T + T * S)))
        return total / S

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in the backward pass (less memory, ~30% more compute)."""
        self.gradient_checkpointing = bool(enabled)

    def new_kv_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> KVCache:
        """Return an empty :class:`KVCache` for the decoder's self-attention: ``batch_size`` rows of up
        to ``max_len`` (default ``block_size``) target positions, in the model's dtype and device."""
        c = self.config
        w = self.tok_emb.weight
        return KVCache(c.n_dec_layer, batch_size, c.n_head, max_len or c.block_size, c.head_dim,
                       dtype or w.dtype, device or w.device)

    def decoding_modules(self) -> list[nn.Module]:
        """Return the modules a generation step runs (the decoder stack and the output layer), the
        ones whose weights generation lays out for one-row products."""
        return [self.decoder, self.lm_head]

    def new_cross_cache(self) -> CrossKVCache:
        """Return an empty :class:`CrossKVCache`: each decoder layer projects the encoder output to
        keys and values on its first call and reuses them after."""
        return CrossKVCache(self.config.n_dec_layer)

    # ------------------------------------------------------------------ forward

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Return the teacher-forcing decoder input of ``labels (B, T)``: the start token, then the
        labels without their last one (-100 read as the pad id)."""
        c = self.config
        out = labels.new_full(labels.shape, c.pad_token_id)
        out[:, 0] = c.decoder_start_token_id
        out[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == IGNORE_INDEX, c.pad_token_id)
        return out

    def _check_length(self, n: int, what: str) -> None:
        limit = self.config.max_positions
        if limit is not None and n > limit:
            raise LmlabError(f"the {what} has {n} tokens but the model has {limit} {what} positions "
                             f"(block_size); shorten the {what} to at most {limit} tokens")

    def _embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(ids)
        return x * math.sqrt(self.config.d_model) if self.config.embed_scale else x

    def _run(self, block: nn.Module, x: torch.Tensor, *args: Any) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, *args, use_reentrant=False)
        return block(x, *args)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Return the encoder output ``(B, S, d)`` for source ids ``(B, S)``; ``attention_mask (B, S)``:
        1 for real tokens, 0 for padding (never attended)."""
        S = input_ids.shape[1]
        self._check_length(S, "source")
        x = self.encoder.embed(self._embed_tokens(input_ids), 0)
        mask: torch.Tensor | None = None
        keep = None if attention_mask is None else attention_mask.to(device=x.device, dtype=torch.bool)
        if self.encoder.rel is not None:
            mask = self.encoder.rel(S, S).to(x.dtype)
            if keep is not None:
                mask = mask.masked_fill(~keep[:, None, None, :], torch.finfo(mask.dtype).min)
        elif keep is not None:
            mask = padding_mask(keep)
        for i, block in enumerate(self.encoder.blocks):
            x = self._run(block, x, None, None, i, mask, False)
        return self.encoder.finish(x)

    def _self_mask(self, T: int, start: int, device: torch.device,
                   dtype: torch.dtype) -> tuple[torch.Tensor | None, bool]:
        """Return the decoder self-attention's ``(mask, is_causal)`` for T queries after ``start``
        cached positions: T5's causal relative bias (future keys at the dtype's minimum), or for
        absolute positions no mask (one query), SDPA's causal flag or a lower-right causal mask."""
        L = start + T
        if self.decoder.rel is not None:
            bias = self.decoder.rel(T, L, start).to(dtype)
            if T > 1:
                bias = bias.masked_fill(~causal_mask(T, L, device), torch.finfo(dtype).min)
            return bias, False
        if T == 1:
            return None, False
        if start == 0:
            return None, True
        return causal_mask(T, L, device), False

    def decode_hidden(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor,
                      attention_mask: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                      cross_cache: CrossKVCache | None = None) -> torch.Tensor:
        """Return the decoder's last hidden states ``(B, T, d)`` (after the final norm) for target ids
        ``(B, T)`` that continue the ``kv_cache.length`` positions already cached, attending to
        ``memory`` (the encoder output; its keys/values kept in ``cross_cache`` when given) with the
        source's ``attention_mask``. Advances ``kv_cache.length``."""
        B, T = decoder_input_ids.shape
        start = kv_cache.length if kv_cache is not None else 0
        self._check_length(start + T, "target")
        if kv_cache is not None and start + T > kv_cache.max_len:
            raise LmlabError(f"KV cache holds {kv_cache.max_len} positions, {start + T} needed; "
                             "create it with a larger max_len")
        x = self.decoder.embed(self._embed_tokens(decoder_input_ids), start)
        mask, is_causal = self._self_mask(T, start, x.device, x.dtype)
        memory_mask = None if attention_mask is None else padding_mask(attention_mask.to(x.device))
        for i, block in enumerate(self.decoder.blocks):
            x = self._run(block, x, None, kv_cache, i, mask, is_causal, memory, memory_mask, cross_cache)
        if kv_cache is not None:
            kv_cache.length = start + T
        return self.decoder.finish(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Return the output logits ``(..., V)`` of decoder hidden states ``(..., d)``."""
        if self.config.scale_logits:
            hidden = hidden * self.config.d_model ** -0.5
        out = self.lm_head(hidden)
        return out if self.final_logits_bias is None else out + self.final_logits_bias.to(out.dtype)

    def decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor,
               attention_mask: torch.Tensor | None = None, kv_cache: KVCache | None = None,
               cross_cache: CrossKVCache | None = None, last_only: bool = False) -> torch.Tensor:
        """Return the logits ``(B, T, V)`` (``(B, 1, V)`` with ``last_only``) of target ids ``(B, T)``
        given the encoder output ``memory``; caches as in :meth:`decode_hidden`."""
        h = self.decode_hidden(decoder_input_ids, memory, attention_mask, kv_cache, cross_cache)
        return self.logits(h[:, -1:] if last_only else h)

    def decode_step(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor,
                    attention_mask: torch.Tensor | None, kv_cache: KVCache,
                    cross_cache: CrossKVCache) -> torch.Tensor:
        """One generation step: append target ids ``(B, T)`` (usually T = 1) to the cached ones and
        return the next-token logits ``(B, V)``. The cross-attention keys/values of ``memory`` are
        computed on the first step and read from ``cross_cache`` after."""
        logits = self.decode(decoder_input_ids, memory, attention_mask, kv_cache, cross_cache, last_only=True)
        return logits[:, -1]

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                targets: torch.Tensor | None = None) -> torch.Tensor:
        """Return next-token logits ``(B, T_dec, V)`` of the target given the source.

        ``input_ids (B, S)``: source ids; ``attention_mask (B, S)``: 1 for source tokens, 0 for
        padding; ``decoder_input_ids (B, T)``: the target shifted right behind the start token
        (made from ``targets`` with :meth:`shift_right` when None). With ``targets (B, T)`` (-100
        ignored) return the mean cross-entropy instead; in fp32 without a logits bias the output
        layer and the loss are fused.
        """
        if decoder_input_ids is None:
            if targets is None:
                raise LmlabError("an encoder-decoder needs decoder_input_ids or targets (labels) to decode")
            decoder_input_ids = self.shift_right(targets)
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # no padding: no (B, heads, S, S) bias with padding, SDPA's faster paths
        memory = self.encode(input_ids, attention_mask)
        h = self.decode_hidden(decoder_input_ids, memory, attention_mask)
        if targets is None:
            return self.logits(h)
        w = self.lm_head.weight
        fused = (h.dtype == torch.float32 and w.dtype == torch.float32 and self.final_logits_bias is None
                 and not torch.is_autocast_enabled(h.device.type))
        if fused:
            if self.config.scale_logits:
                h = h * self.config.d_model ** -0.5
            return linear_cross_entropy(h, w, targets, self._logits_workspace)
        return token_cross_entropy(self.logits(h), targets)


_VASWANI = dict(pos="sinusoidal", norm="layernorm", norm_eps=1e-5, post_norm=True, act="relu", bias=True,
                embed_scale=True, tie_embeddings=True, objective="denoise", init="xavier")
_T5 = dict(pos="relative", norm="rmsnorm", norm_eps=1e-6, post_norm=False, final_norm=True, act="relu",
           bias=False, attn_scale=1.0, tie_embeddings=True, scale_logits=True, objective="span-corruption",
           init="t5")
_T5_V1_1 = dict(_T5, act="gelu_tanh", gated=True, tie_embeddings=False, scale_logits=False)
_BART = dict(pos="learned", pos_offset=2, norm="layernorm", norm_eps=1e-5, post_norm=True, act="gelu",
             bias=True, embed_norm=True, tie_embeddings=True, logits_bias=True, objective="denoise")
# Special ids: the real-shape presets keep their tokenizers' (T5: pad 0, eos 1; BART: bos 0, pad 1,
# eos 2); the tiny ones lmlab's (<|endoftext|> 0, <|pad|> 1), so they train on lmlab data as they are.
_HF_T5_IDS = dict(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
_TINY = dict(vocab_size=4096, block_size=128, n_layer=2, n_head=4, d_model=64)

PRESETS: dict[str, dict[str, Any]] = {
    # Vaswani et al. 2017, base: sinusoidal positions, post-LN, ReLU, embeddings shared by source,
    # target and output and scaled by sqrt(d); decoding starts from end-of-sequence (fairseq).
    "transformer-tiny": dict(_VASWANI, **_TINY, d_ff=256, decoder_start_token_id=0),
    "transformer-base": dict(_VASWANI, vocab_size=37000, block_size=512, n_layer=6, n_head=8, d_model=512,
                             d_ff=2048, dropout=0.1, decoder_start_token_id=0),
    # T5 v1.0 (Raffel et al. 2020): pre-RMSNorm, relative position bias, ReLU, tied head rescaled.
    "t5-tiny": dict(_T5, **_TINY, head_dim=16, d_ff=256),
    "t5-small": dict(_T5, vocab_size=32128, block_size=512, n_layer=6, n_head=8, d_model=512, head_dim=64,
                     d_ff=2048, dropout=0.1, **_HF_T5_IDS),
    # T5 v1.1: gated GELU (tanh), untied head without the rescale.
    "t5-v1_1-tiny": dict(_T5_V1_1, **_TINY, head_dim=16, d_ff=128),
    "t5-v1_1-small": dict(_T5_V1_1, vocab_size=32128, block_size=512, n_layer=8, n_head=6, d_model=512,
                          head_dim=64, d_ff=1024, dropout=0.1, **_HF_T5_IDS),
    # BART (Lewis et al. 2020): learned positions offset by 2, layernorm_embedding, post-LN, GELU.
    "bart-tiny": dict(_BART, **_TINY, d_ff=256, decoder_start_token_id=0),
    "bart-base": dict(_BART, vocab_size=50265, block_size=1024, n_layer=6, n_head=12, d_model=768, d_ff=3072,
                      dropout=0.1, bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2),
}
