"""RNNsearch: the attention encoder-decoder of Bahdanau, Cho & Bengio (2015).

The encoder is a bidirectional GRU; each source position j gets an annotation
``h_j = [forward h_j; backward h_j]``. The decoder is a GRU whose state ``s_t`` is
updated from the previous output token and a context vector ``c_t = sum_j a_tj h_j``,
where the weights come from the additive alignment model

    e_tj = v^T tanh(W s_{t-1} + U h_j),    a_t = softmax_j(e_t)   (padding masked out).

The first decoder state is ``s_0 = tanh(W_s backward h_1)``, and the output layer is the
paper's deep output with a maxout unit over ``[s_t; E y_{t-1}; c_t]``. (The paper's
appendix feeds ``s_{t-1}`` to the output layer; its eq. 4, followed here, uses ``s_t``.)
``U h_j`` does not depend on t, so it is computed once per source sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lmlab.errors import LmlabError


@dataclass
class Seq2SeqConfig:
    """Shape of an RNNsearch model: vocabulary sizes, embedding, GRU and alignment sizes, dropout."""

    src_vocab_size: int
    tgt_vocab_size: int
    emb: int = 32
    hidden: int = 64  # per encoder direction, and the decoder state size
    attn: int = 64  # hidden size of the alignment model (n' in the paper)
    dropout: float = 0.1
    pad_id: int = 0

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "emb", "hidden", "attn"):
            if getattr(self, name) < 1:
                raise LmlabError(f"{name} must be at least 1, got {getattr(self, name)}; use a positive one")
        if not 0.0 <= self.dropout < 1.0:
            raise LmlabError(f"dropout must be in [0, 1), got {self.dropout}; pick e.g. 0.1")


@dataclass
class EncoderOutput:
    """What the decoder attends to: annotations (B, S, 2H), keys U h (B, S, A), mask (B, S), s_0 (B, H)."""

    annotations: torch.Tensor
    keys: torch.Tensor
    mask: torch.Tensor
    init_state: torch.Tensor

    def select(self, index: torch.Tensor) -> EncoderOutput:
        """Return the rows ``index`` of every field (used to expand and reorder beams)."""
        return EncoderOutput(self.annotations[index], self.keys[index], self.mask[index],
                             self.init_state[index])


class AdditiveAttention(nn.Module):
    """Bahdanau's alignment model: ``e_j = v^T tanh(W q + U h_j)``, softmax over unmasked j."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int):
        super().__init__()
        self.W = nn.Linear(query_dim, attn_dim, bias=False)
        self.U = nn.Linear(key_dim, attn_dim)
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def keys(self, annotations: torch.Tensor) -> torch.Tensor:
        """Return ``U h_j`` for all positions (B, S, A); it is the same at every decoder step."""
        return self.U(annotations)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend from ``query`` (B, Q) over ``values`` (B, S, D) where ``mask`` (B, S) is True.

        Returns the context (B, D) and the weights (B, S), which sum to 1 over the
        unmasked positions and are exactly 0 on masked ones.
        """
        scores = self.v(torch.tanh(self.W(query).unsqueeze(1) + keys)).squeeze(-1)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        context = torch.bmm(weights.unsqueeze(1), values).squeeze(1)
        return context, weights


class Seq2Seq(nn.Module):
    """Bidirectional-GRU encoder, GRU decoder with additive attention, maxout deep output.

    ``forward(src, tgt_in)`` takes padded source ids (B, S) and teacher-forced decoder
    inputs (B, T) (``<s>`` then the target) and returns logits (B, T, V_tgt).
    Decoding loops over :meth:`step` after one :meth:`encode`.
    """

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.src_emb = nn.Embedding(cfg.src_vocab_size, cfg.emb, padding_idx=cfg.pad_id)
        self.tgt_emb = nn.Embedding(cfg.tgt_vocab_size, cfg.emb, padding_idx=cfg.pad_id)
        self.encoder = nn.GRU(cfg.emb, h, batch_first=True, bidirectional=True)
        self.init_state = nn.Linear(h, h)
        self.attention = AdditiveAttention(h, 2 * h, cfg.attn)
        self.decoder = nn.GRUCell(cfg.emb + 2 * h, h)
        self.pre_output = nn.Linear(h + cfg.emb + 2 * h, 2 * h)  # maxout over pairs -> h
        self.output = nn.Linear(h, cfg.tgt_vocab_size)
        self.drop = nn.Dropout(cfg.dropout)

    def encode(self, src: torch.Tensor) -> EncoderOutput:
        """Run the encoder on padded source ids (B, S); return the annotations, keys, mask and s_0."""
        mask = src != self.cfg.pad_id
        lengths = mask.sum(1)
        if bool((lengths == 0).any()):
            raise LmlabError("a source sequence is empty; every input needs at least one symbol")
        # Packing makes the backward GRU start at each sequence's last real token, not at padding.
        packed = pack_padded_sequence(self.drop(self.src_emb(src)), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, h_n = self.encoder(packed)
        annotations, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        init_state = torch.tanh(self.init_state(h_n[1]))  # h_n[1]: backward GRU after reading back to token 1
        return EncoderOutput(annotations, self.attention.keys(annotations), mask, init_state)

    def step(self, prev: torch.Tensor, state: torch.Tensor,
             memory: EncoderOutput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decoder step from previous tokens (B,) and state s_{t-1} (B, H).

        Returns the logits (B, V_tgt), the new state s_t (B, H) and the attention
        weights a_t (B, S).
        """
        e = self.drop(self.tgt_emb(prev))
        context, weights = self.attention(state, memory.keys, memory.annotations, memory.mask)
        state = self.decoder(torch.cat([e, context], dim=-1), state)
        t = self.pre_output(torch.cat([state, e, context], dim=-1))
        t = t.view(t.size(0), -1, 2).amax(dim=-1)  # maxout with pool size 2
        return self.output(self.drop(t)), state, weights

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor,
                return_attention: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass: logits (B, T, V_tgt), plus attention (B, T, S) if ``return_attention``."""
        memory = self.encode(src)
        state = memory.init_state
        logits, attention = [], []
        for t in range(tgt_in.size(1)):
            step_logits, state, weights = self.step(tgt_in[:, t], state, memory)
            logits.append(step_logits)
            attention.append(weights)
        out = torch.stack(logits, dim=1)
        if return_attention:
            return out, torch.stack(attention, dim=1)
        return out
