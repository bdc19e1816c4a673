"""Recurrent language models: Elman RNN, LSTM and GRU behind one class.

An embedding, a stack of recurrent layers (``nn.RNN`` with tanh, ``nn.LSTM`` or
``nn.GRU``, one module per layer so dropout can sit between them) and a softmax layer.
Regularisation follows Zaremba et al. (2014) and the basics of AWD-LSTM (Merity et al.
2017): dropout on the embedded input, between layers and on the output, optionally
*locked* (one mask per sequence, reused at every time step), and embedding dropout
(whole word vectors dropped). The output layer can share the input embedding matrix
(Press & Wolf 2017, Inan et al. 2017); when the last hidden size differs from the
embedding size a linear projection maps one to the other.

``forward(ids)`` returns logits ``(B, T, V)`` from a zero state, so code that only knows
``model(ids)`` (evaluation, perplexity) works; ``forward(ids, state)`` or
``return_state=True`` also returns the final state, which truncated BPTT
(:mod:`lmlab.train.bptt`) carries to the next window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.config import DictConfig
from lmlab.errors import LmlabError
from lmlab.nn.linear import Linear

ARCH = "rnn"
CELLS = ("rnn", "lstm", "gru")
# The recurrent state: (h,) for RNN/GRU, (h, c) for LSTM; each tensor (n_layer, B, d_hidden).
State = tuple[torch.Tensor, ...]


@dataclass
class RNNConfig(DictConfig):
    """Shape and regularisation of a recurrent LM."""

    vocab_size: int = 4096
    cell: str = "lstm"  # rnn (Elman, tanh), lstm or gru
    n_layer: int = 2
    d_emb: int = 256
    d_hidden: int = 512
    tie_embeddings: bool = True
    dropout_emb: float = 0.0  # embedding dropout: drop whole word vectors (AWD-LSTM)
    dropout_in: float = 0.0  # on the embedded input
    dropout_hid: float = 0.0  # between recurrent layers
    dropout_out: float = 0.0  # on the last layer's output
    locked_dropout: bool = True  # one dropout mask per sequence (variational) instead of per step (Zaremba)
    block_size: int = 128  # default BPTT / evaluation window; any length works

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise LmlabError(f"recurrent cell {self.cell!r} is not one of {', '.join(CELLS)}")
        for name in ("vocab_size", "n_layer", "d_emb", "d_hidden", "block_size"):
            if int(getattr(self, name)) < 1:
                raise LmlabError(f"RNN {name} must be a positive integer, got {getattr(self, name)}")
        for name in ("dropout_emb", "dropout_in", "dropout_hid", "dropout_out"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise LmlabError(f"RNN {name}={getattr(self, name)} must be in [0, 1)")



class SequenceDropout(nn.Module):
    """Dropout on ``(B, T, D)`` activations; ``locked`` reuses one mask across all T steps."""

    def __init__(self, p: float, locked: bool = True):
        super().__init__()
        self.p = p
        self.locked = locked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` with dropout applied (unchanged in eval mode or when p is 0)."""
        if not self.training or self.p == 0:
            return x
        if not self.locked:
            return F.dropout(x, self.p, training=True)
        mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1 - self.p) / (1 - self.p)
        return x * mask


def embedding_dropout(emb: nn.Embedding, idx: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Look up ``idx`` in ``emb`` after dropping whole rows (words) with probability ``p``.

    Returns ``(B, T, D)``; kept rows are scaled by ``1/(1-p)``. A dropped word is zero at
    every position of the batch (Gal & Ghahramani 2016, as in AWD-LSTM).
    """
    if not training or p == 0:
        return emb(idx)
    mask = emb.weight.new_empty(emb.weight.size(0), 1).bernoulli_(1 - p) / (1 - p)
    return F.embedding(idx, emb.weight * mask)


def _recurrent(cell: str, d_in: int, d_hidden: int) -> nn.RNNBase:
    if cell == "lstm":
        return nn.LSTM(d_in, d_hidden, batch_first=True)
    if cell == "gru":
        return nn.GRU(d_in, d_hidden, batch_first=True)
    return nn.RNN(d_in, d_hidden, nonlinearity="tanh", batch_first=True)


class RNNLM(nn.Module):
    """A recurrent LM: token ids ``(B, T)`` -> logits ``(B, T, V)`` (and the final state on request)."""

    def __init__(self, config: RNNConfig):
        super().__init__()
        self.config = c = config
        self.emb = nn.Embedding(c.vocab_size, c.d_emb)
        self.layers = nn.ModuleList(
            _recurrent(c.cell, c.d_emb if i == 0 else c.d_hidden, c.d_hidden) for i in range(c.n_layer)
        )
        self.drop_in = SequenceDropout(c.dropout_in, c.locked_dropout)
        self.drop_hid = SequenceDropout(c.dropout_hid, c.locked_dropout)
        self.drop_out = SequenceDropout(c.dropout_out, c.locked_dropout)
        d_out = c.d_emb if c.tie_embeddings else c.d_hidden
        self.proj = Linear(c.d_hidden, d_out, bias=False) if d_out != c.d_hidden else None
        self.head = Linear(d_out, c.vocab_size)
        if c.tie_embeddings:
            self.head.weight = self.emb.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Embedding (and tied softmax) N(0, 0.5^2), an untied softmax uniform in [-0.1, 0.1], output
        bias 0; recurrent weights keep PyTorch's uniform(+-1/sqrt(H)); LSTM forget gates start with
        bias 1 (Jozefowicz et al. 2015) so early gradients flow through time.

        Zaremba et al.'s uniform(+-0.1) embedding suits their plain SGD at lr 1; under Adam a
        small model starting from it sits at the unigram loss for many steps, because the inputs
        barely move the hidden state."""
        nn.init.normal_(self.emb.weight, 0.0, 0.5)
        if not self.config.tie_embeddings:
            nn.init.uniform_(self.head.weight, -0.1, 0.1)
        nn.init.zeros_(self.head.bias)
        h = self.config.d_hidden
        for layer in self.layers:
            layer.reset_parameters()
            if isinstance(layer, nn.LSTM):
                with torch.no_grad():
                    layer.bias_ih_l0[h:2 * h].fill_(1.0)  # gate order i, f, g, o
                    layer.bias_hh_l0[h:2 * h].zero_()
        if self.proj is not None:
            self.proj.reset_parameters()

    @property
    def state_size(self) -> int:
        """Tensors in the recurrent state: 2 (h, c) for an LSTM, else 1 (h)."""
        return 2 if self.config.cell == "lstm" else 1

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> State:
        """Return the zero state for ``batch_size`` sequences."""
        w = self.emb.weight
        shape = (self.config.n_layer, batch_size, self.config.d_hidden)
        return tuple(torch.zeros(shape, device=device or w.device, dtype=dtype or w.dtype)
                     for _ in range(self.state_size))

    def check_state(self, state: State, batch_size: int) -> None:
        """Raise LmlabError when ``state`` does not fit this model and a batch of ``batch_size``."""
        want = (self.config.n_layer, batch_size, self.config.d_hidden)
        if len(state) != self.state_size or any(tuple(s.shape) != want for s in state):
            got = [tuple(s.shape) for s in state]
            raise LmlabError(f"recurrent state has shapes {got}, the {self.config.cell} model needs "
                             f"{self.state_size} tensor(s) of {want}; pass the state this model returned")

    def forward(self, idx: torch.Tensor, state: State | None = None,
                return_state: bool = False) -> torch.Tensor | tuple[torch.Tensor, State]:
        """Return logits ``(B, T, V)`` for ids ``idx (B, T)``, continuing ``state`` (zeros when None).

        Returns ``(logits, new_state)`` when a state is given or ``return_state`` is True,
        else just the logits.
        """
        if idx.dim() != 2:
            raise LmlabError(f"RNN LM expects token ids of shape (batch, time), got {tuple(idx.shape)}")
        want_state = return_state or state is not None
        x, new_state = self._run(idx, state)
        if self.proj is not None:
            x = self.proj(x)
        logits = self.head(x)
        if not want_state:
            return logits
        return logits, new_state

    def hidden_states(self, idx: torch.Tensor, state: State | None = None) -> torch.Tensor:
        """Return the last recurrent layer's outputs ``(B, T, d_hidden)`` for ``idx (B, T)`` (after its
        output dropout, before the projection and softmax): the features of a task head. With right
        padding, the outputs at the real positions do not depend on the padding after them."""
        if idx.dim() != 2:
            raise LmlabError(f"RNN LM expects token ids of shape (batch, time), got {tuple(idx.shape)}")
        return self._run(idx, state)[0]

    def _run(self, idx: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        """Embed ``idx`` and run the recurrent layers from ``state`` (zeros when None); return the last
        layer's outputs (after output dropout) and the new state."""
        if state is None:
            state = self.init_state(idx.size(0))
        else:
            self.check_state(state, idx.size(0))
        c = self.config
        x = embedding_dropout(self.emb, idx, c.dropout_emb, self.training)
        x = self.drop_in(x)
        finals: list[list[torch.Tensor]] = [[] for _ in range(self.state_size)]
        for i, layer in enumerate(self.layers):
            if self.state_size == 2:
                layer_state: Any = (state[0][i:i + 1].contiguous(), state[1][i:i + 1].contiguous())
            else:
                layer_state = state[0][i:i + 1].contiguous()
            x, new = layer(x, layer_state)
            for k, s in enumerate(new if self.state_size == 2 else (new,)):
                finals[k].append(s)
            if i < c.n_layer - 1:
                x = self.drop_hid(x)
        return self.drop_out(x), tuple(torch.cat(f, dim=0) for f in finals)

    def num_params(self, non_embedding: bool = False) -> int:
        """Return the number of parameters (a tied matrix once); ``non_embedding`` leaves out the
        input embedding and an untied softmax matrix."""
        params = {id(p): p for p in self.parameters()}
        n = sum(p.numel() for p in params.values())
        if non_embedding:
            n -= self.emb.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:  # noqa: ARG002 - same signature as the decoder's
        """Return training FLOPs per token (forward + backward): 6 x (recurrent, projection and
        softmax matmul parameters); the embedding lookup is free."""
        c = self.config
        d_out = c.d_emb if c.tie_embeddings else c.d_hidden
        return 6.0 * (self.num_params(non_embedding=True) + c.vocab_size * d_out)


_SMALL_RNN = dict(n_layer=2, d_emb=256, d_hidden=512, tie_embeddings=True, dropout_emb=0.05, dropout_in=0.1,
                  dropout_hid=0.1, dropout_out=0.2, block_size=128)
_TINY_RNN = dict(n_layer=1, d_emb=32, d_hidden=48, tie_embeddings=True, block_size=32)

# Preset name -> config values (vocab_size usually comes from the data).
PRESETS: dict[str, dict[str, Any]] = {
    "rnn-small": dict(_SMALL_RNN, cell="rnn"),
    "lstm-small": dict(_SMALL_RNN, cell="lstm"),
    "gru-small": dict(_SMALL_RNN, cell="gru"),
    "rnn-tiny": dict(_TINY_RNN, cell="rnn"),
    "lstm-tiny": dict(_TINY_RNN, cell="lstm"),
    "gru-tiny": dict(_TINY_RNN, cell="gru"),
}
