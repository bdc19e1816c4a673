"""The encoder-only Transformer: BERT and RoBERTa are this one class with different configs.

Token + learned position + token-type (segment) embeddings summed and normalised
(``norm_emb``), then post-norm blocks ``norm(x + attn(x))``, ``norm(x + mlp(x))`` with
bidirectional attention over the real tokens (``attention_mask``), GELU and biases. On
top, BERT's masked-LM head (``mlm``: dense + activation + LayerNorm, then the token
embedding matrix as the output layer plus a bias per token) and, optionally, the pooler
(``tanh(dense(h[CLS]))``) with the next-sentence head (``nsp_head``).

RoBERTa differs by its positions: ``pad_id`` set means position ids count only the
non-padding tokens and start at ``pad_id + 1`` (fairseq's ``make_positions``, Hugging
Face's ``create_position_ids_from_input_ids``), so the table has ``block_size + pad_id + 1``
rows; it has one token type and no NSP.

In training (``targets=``) the vocabulary projection runs only at the masked positions
(about 15% of the tokens), as in Cramming (Geiping & Goldstein 2023) and NVIDIA's BERT:
the head is the widest matmul of a small BERT, and the unmasked positions never need it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmlab.config import DictConfig
from lmlab.errors import LmlabError
from lmlab.nn.attention import padding_mask
from lmlab.nn.block import BlockSpec, TransformerBlock
from lmlab.nn.linear import Linear, linear
from lmlab.nn.losses import IGNORE_INDEX, token_cross_entropy
from lmlab.nn.mlp import activation
from lmlab.nn.norms import LayerNorm
from lmlab.nn.positions import LearnedPositions

ARCH = "encoder"
ACTIVATIONS = ("gelu", "gelu_tanh", "relu")
MASK_RATE = 0.15  # share of tokens the MLM head scores in training (BERT's masking rate)

_BERT = dict(type_vocab_size=2, act="gelu", norm_eps=1e-12, pad_id=None, nsp=True)
_ROBERTA = dict(type_vocab_size=1, act="gelu", norm_eps=1e-5, pad_id=1, nsp=False)

# One table of presets. The real shapes keep their vocabulary and positions (usually overridden
# from the prepared data: get_preset("bert-tiny", vocab_size=4096, block_size=128)) and BERT's
# dropout 0.1; the CPU-sized ones train without dropout (short runs, as in Cramming).
PRESETS: dict[str, dict] = {
    # BERT (Devlin et al. 2019): two token types, MLM + NSP. bert-tiny and bert-small are the shapes
    # of Google's compact BERTs (Turc et al. 2019: google/bert_uncased_L-2_H-128_A-2, L-4_H-512_A-8).
    "bert-micro": dict(_BERT, vocab_size=4096, block_size=128, n_layer=2, n_head=4, d_model=64),
    "bert-tiny": dict(_BERT, vocab_size=30522, block_size=512, n_layer=2, n_head=2, d_model=128),
    "bert-small": dict(_BERT, vocab_size=30522, block_size=512, n_layer=4, n_head=8, d_model=512),
    "bert-base": dict(_BERT, vocab_size=30522, block_size=512, n_layer=12, n_head=12, d_model=768,
                      dropout=0.1),
    # RoBERTa (Liu et al. 2019): BERT's shape, positions offset by the padding id, one token type,
    # MLM only (dynamic masking is the collator's business).
    "roberta-micro": dict(_ROBERTA, vocab_size=4096, block_size=128, n_layer=2, n_head=4, d_model=64),
    "roberta-small": dict(_ROBERTA, vocab_size=50265, block_size=512, n_layer=4, n_head=8, d_model=512),
    "roberta-base": dict(_ROBERTA, vocab_size=50265, block_size=512, n_layer=12, n_head=12, d_model=768,
                         dropout=0.1),
}


@dataclass
class EncoderConfig(DictConfig):
    """Shape and variant of an encoder-only Transformer (BERT, RoBERTa).

    ``block_size``: the longest input in tokens. ``pad_id`` None: positions ``0..T-1`` (BERT);
    an id: RoBERTa's positions (see the module docstring), the table then holds
    ``block_size + pad_id + 1`` rows. ``d_ff`` None: ``4 * d_model``. ``act``: the activation of
    the blocks and the MLM head (``gelu`` exact as BERT, ``gelu_tanh``, ``relu``).
    ``mlm_head`` False: no masked-LM head (a ``BertModel`` checkpoint such as MiniLM: hidden
    states only). ``nsp``: BERT's pooler and next-sentence head (implies ``pooler``).
    """

    vocab_size: int = 30522
    block_size: int = 512
    type_vocab_size: int = 2
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    d_ff: int | None = None
    act: str = "gelu"
    norm_eps: float = 1e-12
    pad_id: int | None = None
    mlm_head: bool = True
    pooler: bool = False
    nsp: bool = False
    dropout: float = 0.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.act not in ACTIVATIONS:
            raise LmlabError(f"model act={self.act!r} is not one of {', '.join(ACTIVATIONS)}")
        for name in ("vocab_size", "block_size", "type_vocab_size", "n_layer", "n_head", "d_model"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LmlabError(f"model {name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_head:
            raise LmlabError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}; "
                             "change one of them")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.pad_id is not None and not 0 <= self.pad_id < self.vocab_size:
            raise LmlabError(f"pad_id={self.pad_id} is outside the vocabulary of {self.vocab_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise LmlabError(f"dropout={self.dropout} must be in [0, 1)")
        if self.nsp:
            self.pooler = True

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_head

    @property
    def n_positions(self) -> int:
        """Rows of the position table: ``block_size``, plus RoBERTa's ``pad_id + 1`` offset."""
        return self.block_size + (0 if self.pad_id is None else self.pad_id + 1)

    @property
    def objective(self) -> str:
        """The pretraining objective this model is made for: ``mlm+nsp`` (BERT) or ``mlm`` (RoBERTa)."""
        return "mlm+nsp" if self.nsp else "mlm"


def block_spec(cfg: EncoderConfig) -> BlockSpec:
    """Return the post-norm block of an encoder config: LayerNorm with bias, dense MLP, biases."""
    return BlockSpec(cfg.d_model, cfg.n_head, cfg.n_head, cfg.head_dim, cfg.d_ff, norm="layernorm",
                     norm_eps=cfg.norm_eps, norm_bias=True, bias=True, act=cfg.act, post_norm=True,
                     dropout=cfg.dropout)


class MLMHead(nn.Module):
    """BERT's masked-LM head without its output matrix: ``norm(act(dense(h)))``, then the model's
    token embedding ``weight`` and the per-token ``bias`` give the logits."""

    def __init__(self, d_model: int, vocab_size: int, act: str, eps: float):
        super().__init__()
        self.dense = Linear(d_model, d_model)
        self.norm = LayerNorm(d_model, eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.act = act

    def forward(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Return the logits ``(..., V)`` of hidden states ``h (..., d)``."""
        return linear(self.norm(activation(self.act, self.dense(h))), weight, self.bias)


class Encoder(nn.Module):
    """An encoder-only Transformer: ``(input_ids, attention_mask, token_type_ids)`` -> MLM logits
    ``(B, T, V)``."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = cfg = config
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = LearnedPositions(cfg.n_positions, cfg.d_model)
        self.type_emb = nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        self.norm_emb = LayerNorm(cfg.d_model, cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else None
        self.blocks = nn.ModuleList(TransformerBlock(block_spec(cfg)) for _ in range(cfg.n_layer))
        self.mlm = MLMHead(cfg.d_model, cfg.vocab_size, cfg.act, cfg.norm_eps) if cfg.mlm_head else None
        self.pooler = Linear(cfg.d_model, cfg.d_model) if cfg.pooler else None
        self.nsp_head = Linear(cfg.d_model, 2) if cfg.nsp else None
        self.gradient_checkpointing = False
        self.fused_loss = True  # forward(..., targets=labels) returns the loss (masked positions only)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT's init: weights N(0, init_std), biases 0, norms 1 (no depth scaling)."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding, LearnedPositions)):
                nn.init.normal_(module.weight, 0.0, std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, MLMHead):
                nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        """Return the number of parameters (the tied output matrix once); ``non_embedding`` leaves
        out the token, position and token-type embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel() + self.pos_emb.weight.numel() + self.type_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Return training FLOPs per input token (forward + backward) at ``seq_len``.

        PaLM's count ``6 N + 12 n_layer d_model seq_len`` with N the non-embedding parameters
        outside the MLM head (blocks, embedding norm, pooler), plus the MLM head (its own
        parameters and the tied ``V x d`` output matrix) counted at the masked positions only,
        ``MASK_RATE`` (15%) of the tokens: in training the head runs nowhere else (the
        masked-only head), so counting it at every token would overstate MFU.
        """
        c = self.config
        head = sum(p.numel() for p in self.mlm.parameters()) + c.vocab_size * c.d_model if self.mlm else 0
        body = self.num_params(non_embedding=True) - (head - c.vocab_size * c.d_model if self.mlm else 0)
        return 6.0 * body + 6.0 * MASK_RATE * head + 12.0 * c.n_layer * c.d_model * seq_len

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in the backward pass (less memory, ~30% more compute)."""
        self.gradient_checkpointing = bool(enabled)

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """Return RoBERTa's position ids ``(B, T)`` (non-padding tokens counted from ``pad_id + 1``,
        padding at ``pad_id``), or None for BERT's ``0..T-1``."""
        pad = self.config.pad_id
        if pad is None:
            return None
        real = input_ids.ne(pad).int()
        return (torch.cumsum(real, dim=1) * real).long() + pad

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Return the last layer's hidden states ``(B, T, d_model)`` (before the MLM head).

        ``attention_mask (B, T)``: 1 for real tokens, 0 for padding (no token attends to
        padding); ``token_type_ids (B, T)``: segment ids (0 everywhere when None).
        """
        B, T = input_ids.shape
        if T > self.config.block_size:
            raise LmlabError(f"sequence of {T} tokens exceeds the model's {self.config.block_size} "
                             f"positions; feed at most {self.config.block_size} tokens")
        x = self.tok_emb(input_ids)
        positions = self.position_ids(input_ids)
        x = x + (self.pos_emb.weight[:T] if positions is None else self.pos_emb(positions))
        x = x + (self.type_emb.weight[0] if token_type_ids is None else self.type_emb(token_type_ids))
        x = self.norm_emb(x)
        if self.drop is not None:
            x = self.drop(x)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = padding_mask(attention_mask.to(x.device))  # all ones: no mask, SDPA's fastest path
        for i, block in enumerate(self.blocks):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, None, None, i, mask, False, use_reentrant=False)
            else:
                x = block(x, None, None, i, mask, False)
        return x

    def require_mlm_head(self) -> MLMHead:
        """Return the masked-LM head; raise LmlabError when the model has none (a BertModel import)."""
        if self.mlm is None:
            raise LmlabError("this encoder has no masked-LM head (it was imported from a BertModel/"
                             "RobertaModel checkpoint, which has none); use its hidden states "
                             "('lmlab embed'), or train an encoder with one")
        return self.mlm

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Return the MLM logits ``(..., V)`` of hidden states ``(..., d_model)``."""
        return self.require_mlm_head()(hidden, self.tok_emb.weight)

    def pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        """Return BERT's pooled output ``tanh(dense(hidden[:, 0]))`` ``(B, d_model)``."""
        if self.pooler is None:
            raise LmlabError("this encoder has no pooler; build it with nsp=true (BERT) or pooler=true")
        return torch.tanh(self.pooler(hidden[:, 0]))

    def nsp_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Return the next-sentence logits ``(B, 2)`` (0: B follows A, 1: B is random) of
        ``hidden (B, T, d)``."""
        if self.nsp_head is None:
            raise LmlabError("this encoder has no next-sentence head (nsp=false, as RoBERTa); "
                             "train with the mlm objective, or build it with nsp=true")
        return self.nsp_head(self.pooled(hidden))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                targets: torch.Tensor | None = None) -> torch.Tensor:
        """Return the MLM logits ``(B, T, V)`` of ``input_ids (B, T)``.

        With ``targets (B, T)`` (the original token at masked positions, -100 elsewhere)
        return the mean cross-entropy over the masked positions instead, computing the head
        only there (0 when nothing is masked).
        """
        hidden = self.hidden_states(input_ids, attention_mask, token_type_ids)
        if targets is None:
            return self.mlm_logits(hidden)
        scored = targets != IGNORE_INDEX
        h = hidden[scored]  # (N_masked, d)
        if h.shape[0] == 0:
            return hidden.sum() * 0.0  # keeps the graph (and DDP) intact on a batch with no masks
        logits = self.mlm_logits(h)
        if logits.dtype == torch.float32:
            return F.cross_entropy(logits, targets[scored])
        return token_cross_entropy(logits, targets[scored])
