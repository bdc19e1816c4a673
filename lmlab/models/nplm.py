"""The neural probabilistic language model of Bengio, Ducharme, Vincent & Jauvin (2003).

For each position t the model looks up the embeddings ``C(w)`` of the ``context``
tokens ``w_{t-context+1} .. w_t`` (the paper's n-1 previous words, so this is an
order ``n = context + 1`` model), concatenates them into ``x``, and scores the next
token with

    y = b + W x + U tanh(d + H x)        (eq. 1 of the paper; ``W x`` only with ``direct``)

followed by a softmax. Positions before the start of the sequence read a learned
padding embedding. As a module it maps token ids ``(B, T)`` to logits ``(B, T, V)``
for every position at once, so it trains with the same next-token objective and
evaluates with the same code as a Transformer decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmlab.config import DictConfig
from lmlab.errors import LmlabError
from lmlab.nn.linear import Linear

ARCH = "nplm"


@dataclass
class NPLMConfig(DictConfig):
    """Shape of an NPLM: vocabulary, context length (n-1), embedding and hidden sizes."""

    vocab_size: int = 4096
    context: int = 5  # tokens the prediction conditions on: the paper's n - 1
    d_emb: int = 64  # m, the size of a word feature vector C(w)
    d_hidden: int = 256  # h, hidden units of the tanh layer
    direct: bool = False  # the direct connections W x from the embeddings to the output
    dropout: float = 0.0  # on the concatenated embeddings and on the hidden layer
    block_size: int = 128  # default training/evaluation window; any length works

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "d_emb", "d_hidden", "block_size"):
            if int(getattr(self, name)) < 1:
                raise LmlabError(f"NPLM {name} must be a positive integer, got {getattr(self, name)}; "
                                 f"e.g. context=5 conditions on the 5 previous tokens")
        if not 0.0 <= self.dropout < 1.0:
            raise LmlabError(f"NPLM dropout={self.dropout} must be in [0, 1)")



class NPLM(nn.Module):
    """Bengio et al.'s feed-forward LM: token ids ``(B, T)`` -> next-token logits ``(B, T, V)``."""

    def __init__(self, config: NPLMConfig):
        super().__init__()
        self.config = c = config
        # Row vocab_size is the padding vector read for positions before the sequence start.
        self.emb = nn.Embedding(c.vocab_size + 1, c.d_emb)
        self.hidden = Linear(c.context * c.d_emb, c.d_hidden)  # d + H x
        self.out = Linear(c.d_hidden, c.vocab_size)  # b + U tanh(.)
        self.direct = Linear(c.context * c.d_emb, c.vocab_size, bias=False) if c.direct else None
        self.drop = nn.Dropout(c.dropout) if c.dropout > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Small random embeddings, PyTorch's default fan-in init for the layers, zero output bias
        and zero direct connections (the model starts as a plain tanh network)."""
        nn.init.normal_(self.emb.weight, 0.0, 0.1)
        self.hidden.reset_parameters()
        self.out.reset_parameters()
        nn.init.zeros_(self.out.bias)
        if self.direct is not None:
            nn.init.zeros_(self.direct.weight)

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        """Return ``x`` for every position: the concatenated embeddings of its context, ``(B, T, n-1 m)``.

        Position t reads tokens ``t-context+1 .. t`` (oldest first); earlier positions
        read the padding embedding.
        """
        if idx.dim() != 2:
            raise LmlabError(f"NPLM expects token ids of shape (batch, time), got {tuple(idx.shape)}")
        c = self.config
        pad = idx.new_full((idx.size(0), c.context - 1), c.vocab_size)
        windows = torch.cat([pad, idx], dim=1).unfold(1, c.context, 1)  # (B, T, context)
        return self.emb(windows).flatten(2)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Return next-token logits ``(B, T, V)`` for token ids ``idx (B, T)``."""
        x = self.drop(self.features(idx))
        y = self.out(self.drop(torch.tanh(self.hidden(x))))
        if self.direct is not None:
            y = y + self.direct(x)
        return y

    def num_params(self, non_embedding: bool = False) -> int:
        """Return the number of parameters; ``non_embedding`` leaves out the embedding table C."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.emb.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int) -> float:  # noqa: ARG002 - same signature as the decoder's
        """Return training FLOPs per token (forward + backward): 6 x the parameters used in matmuls."""
        return 6.0 * self.num_params(non_embedding=True)


# Preset name -> config values (vocab_size usually comes from the data).
PRESETS: dict[str, dict[str, Any]] = {
    # Bengio et al. 2003: order-6 model (5 tokens of context), direct connections on.
    "nplm-small": dict(context=5, d_emb=64, d_hidden=512, direct=True, dropout=0.1, block_size=128),
    "nplm-tiny": dict(context=3, d_emb=16, d_hidden=64, direct=True, block_size=32),
}
