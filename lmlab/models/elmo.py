"""ELMo's bidirectional language model (Peters et al. 2018, "Deep contextualized word representations").

A forward LSTM LM reads the tokens left to right and predicts the next one; a backward
LSTM LM reads them right to left and predicts the previous one. The two share the token
representation and the softmax, and train jointly on the sum of their negative
log-likelihoods (:func:`bilm_loss`). The token representation ``x_k`` is a token
embedding by default, or, as in the paper, a character CNN over the token's UTF-8 bytes
(max-pooled convolutions of several widths, highway layers, a projection), which gives
a vector to any word, seen in training or not. Each LSTM layer has ``d_hidden`` cells
projected to ``d_model`` outputs, with a residual connection from the second layer on.

For token k, layer 0 is ``[x_k; x_k]`` and layer j is ``[forward h_kj; backward h_kj]``;
:class:`ScalarMix` combines them as ``ELMo_k = gamma * sum_j s_j h_kj`` with
softmax-normalised ``s`` (eq. 1 of the paper). Called as ``model(ids)`` the module
returns the forward LM's logits, so perplexity code treats it as a causal LM;
:meth:`ELMo.forward_lm` also carries the forward LSTMs' state, so it can generate text.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from lmlab.config import DictConfig
from lmlab.errors import LmlabError
from lmlab.nn.linear import Linear
from lmlab.nn.losses import token_cross_entropy

ARCH = "elmo"
# Character ids: the 256 byte values, then begin-of-word, end-of-word and padding.
BOW, EOW, PAD_CHAR = 256, 257, 258
N_CHARS = 259


@dataclass
class ElmoConfig(DictConfig):
    """Shape of an ELMo biLM: token input or character CNN, LSTM layers, dropout."""

    vocab_size: int = 4096
    n_layer: int = 2
    d_model: int = 256  # token representation and projected LSTM output size, per direction
    d_hidden: int = 1024  # LSTM cells per layer and direction (projected down to d_model)
    char_cnn: bool = False  # token representation from a character CNN instead of an embedding table
    max_chars: int = 20  # bytes per token seen by the CNN, begin/end-of-word markers included
    d_char: int = 16
    filters: list[list[int]] = field(default_factory=lambda: [[1, 32], [2, 32], [3, 64], [4, 128], [5, 128]])
    n_highway: int = 2
    dropout: float = 0.1
    tie_embeddings: bool = True  # softmax shares the token embedding (token input only)
    block_size: int = 128  # default training/evaluation window; any length works

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "d_model", "d_hidden", "block_size", "d_char"):
            if int(getattr(self, name)) < 1:
                raise LmlabError(f"ELMo {name} must be a positive integer, got {getattr(self, name)}")
        if self.d_hidden < self.d_model:
            raise LmlabError(f"ELMo d_hidden={self.d_hidden} must be at least d_model={self.d_model} "
                             "(the LSTM cells are projected down to d_model); raise d_hidden")
        if not 0.0 <= self.dropout < 1.0:
            raise LmlabError(f"ELMo dropout={self.dropout} must be in [0, 1)")
        self.filters = [[int(w), int(n)] for w, n in self.filters]
        if self.char_cnn:
            if not self.filters or any(w < 1 or n < 1 for w, n in self.filters):
                raise LmlabError("ELMo filters must be a non-empty list of [width, count] pairs of "
                                 "positive ints, e.g. [[1, 32], [2, 32], [3, 64]]")
            widest = max(w for w, _ in self.filters)
            if self.max_chars < max(3, widest):
                raise LmlabError(f"ELMo max_chars={self.max_chars} is shorter than the widest filter "
                                 f"({widest}) or the 3 characters of a marked one-byte word; raise max_chars")



# ---------------------------------------------------------------- characters of tokens
@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the printable character standing for each byte -> the byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(keep)
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def token_bytes(tokenizer: Any) -> list[bytes]:
    """Return the UTF-8 bytes each id of an lmlab ``Tokenizer`` stands for (index = id).

    Byte-fallback tokens ``<0xNN>`` are the byte NN; byte-level BPE pieces are mapped
    back through GPT-2's byte alphabet; other tokens (words, characters, special
    tokens) are their own text.
    """
    decoder = _byte_decoder() if tokenizer.kind == "bpe" else {}
    out = []
    for i in range(tokenizer.vocab_size):
        tok = tokenizer.id_to_token(i) or ""
        m = _BYTE_TOKEN.fullmatch(tok)
        if m:
            out.append(bytes([int(m.group(1), 16)]))
        elif decoder and tok and all(ch in decoder for ch in tok):
            out.append(bytes(decoder[ch] for ch in tok))
        else:
            out.append(tok.encode("utf-8"))
    return out


def word_char_ids(word: bytes, max_chars: int) -> list[int]:
    """Return the ``max_chars`` character ids of a word: BOW, its first bytes, EOW, then padding."""
    body = list(word[: max_chars - 2])
    ids = [BOW, *body, EOW]
    return ids + [PAD_CHAR] * (max_chars - len(ids))


# ---------------------------------------------------------------- character CNN
class Highway(nn.Module):
    """Highway layers (Srivastava et al. 2015): ``y = g x + (1 - g) relu(W x)``, ``g = sigmoid(W_g x)``."""

    def __init__(self, dim: int, n_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, 2 * dim) for _ in range(n_layers))
        self.reset_gates()

    def reset_gates(self) -> None:
        """Set the gate biases to 1, so the layers start by mostly carrying their input through."""
        for layer in self.layers:
            with torch.no_grad():
                layer.bias[layer.out_features // 2:].fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the transformed ``x`` (same shape)."""
        for layer in self.layers:
            h, gate = layer(x).chunk(2, dim=-1)
            g = torch.sigmoid(gate)
            x = g * x + (1 - g) * torch.relu(h)
        return x


class CharCNN(nn.Module):
    """Character-CNN token representation: char ids ``(..., max_chars)`` -> vectors ``(..., d_model)``."""

    def __init__(self, c: ElmoConfig):
        super().__init__()
        self.char_emb = nn.Embedding(N_CHARS, c.d_char, padding_idx=PAD_CHAR)
        self.convs = nn.ModuleList(nn.Conv1d(c.d_char, n, w) for w, n in c.filters)
        n_filters = sum(n for _, n in c.filters)
        self.highway = Highway(n_filters, c.n_highway)
        self.proj = nn.Linear(n_filters, c.d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """bilm-tf's init: character vectors uniform(-1, 1), weights N(0, 1/fan_in), biases 0
        (PyTorch's default fan-in init is sqrt(3) times smaller, so words start out more alike)."""
        nn.init.uniform_(self.char_emb.weight, -1.0, 1.0)
        with torch.no_grad():
            self.char_emb.weight[PAD_CHAR].zero_()
        layers = [*self.convs, *self.highway.layers, self.proj]
        for layer in layers:
            fan_in = layer.weight[0].numel()
            nn.init.normal_(layer.weight, 0.0, fan_in ** -0.5)
            nn.init.zeros_(layer.bias)
        self.highway.reset_gates()

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        """Return one vector per word: convolutions over its characters, max-pooled, ReLU, highway, proj."""
        lead = chars.shape[:-1]
        x = self.char_emb(chars.reshape(-1, chars.size(-1))).transpose(1, 2)  # (N, d_char, max_chars)
        feats = torch.cat([torch.relu(conv(x).amax(dim=-1)) for conv in self.convs], dim=-1)
        return self.proj(self.highway(feats)).reshape(*lead, -1)


# ---------------------------------------------------------------- the biLM
class ELMo(nn.Module):
    """ELMo's biLM. ``model(ids)`` -> forward-LM logits ``(B, T, V)``; ``model(ids, bidirectional=True)``
    -> ``(forward logits, backward logits)``; :meth:`layers` -> the per-layer contextual vectors."""

    def __init__(self, config: ElmoConfig):
        super().__init__()
        self.config = c = config
        self.tok_emb: nn.Embedding | None = None
        self.char_cnn: CharCNN | None = None
        if c.char_cnn:
            self.char_cnn = CharCNN(c)
            # The characters of every vocabulary id, filled by set_vocabulary(); saved with the weights.
            table = torch.full((c.vocab_size, c.max_chars), PAD_CHAR, dtype=torch.long)
            self.register_buffer("token_chars", table)
        else:
            self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        proj = c.d_model if c.d_hidden != c.d_model else 0
        self.fwd = nn.ModuleList(nn.LSTM(c.d_model, c.d_hidden, batch_first=True, proj_size=proj)
                                 for _ in range(c.n_layer))
        self.bwd = nn.ModuleList(nn.LSTM(c.d_model, c.d_hidden, batch_first=True, proj_size=proj)
                                 for _ in range(c.n_layer))
        self.drop = nn.Dropout(c.dropout) if c.dropout > 0 else nn.Identity()
        self.head = Linear(c.d_model, c.vocab_size)
        if self.tok_emb is not None and c.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        self._chars_checked = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Token embedding (and tied softmax) N(0, 0.5^2), an untied softmax N(0, 0.05^2), zero softmax
        bias, LSTM forget-gate bias 1 (see :meth:`lmlab.models.rnn.RNNLM.reset_parameters`)."""
        if self.tok_emb is not None:
            nn.init.normal_(self.tok_emb.weight, 0.0, 0.5)
        if self.tok_emb is None or not self.config.tie_embeddings:
            nn.init.normal_(self.head.weight, 0.0, 0.05)
        nn.init.zeros_(self.head.bias)
        h = self.config.d_hidden
        for lstm in [*self.fwd, *self.bwd]:
            lstm.reset_parameters()
            with torch.no_grad():
                lstm.bias_ih_l0[h:2 * h].fill_(1.0)
                lstm.bias_hh_l0[h:2 * h].zero_()

    # ------------------------------------------------------------ vocabulary characters
    def set_vocabulary(self, tokenizer: Any) -> None:
        """Fill the character table of a char-CNN model from an lmlab ``Tokenizer`` (its vocabulary
        must have ``vocab_size`` ids or fewer). Does nothing for a token-input model."""
        if self.char_cnn is None:
            return
        pieces = token_bytes(tokenizer)
        if len(pieces) > self.config.vocab_size:
            raise LmlabError(f"the tokenizer has {len(pieces)} ids, more than the model's vocabulary "
                             f"({self.config.vocab_size}); build the model with vocab_size={len(pieces)}")
        table = torch.tensor([word_char_ids(p, self.config.max_chars) for p in pieces], dtype=torch.long)
        with torch.no_grad():
            self.token_chars[: len(pieces)] = table.to(self.token_chars.device)
        self._chars_checked = True

    def _check_chars(self) -> None:
        if not self._chars_checked:
            if bool((self.token_chars[:, 0] != BOW).all()):
                raise LmlabError("this char-CNN ELMo has no vocabulary characters; call "
                                 "model.set_vocabulary(tokenizer) after building it")
            self._chars_checked = True

    def chars_of(self, idx: torch.Tensor) -> torch.Tensor:
        """Return the character ids ``(..., max_chars)`` of token ids ``idx`` (char-CNN models)."""
        if self.char_cnn is None:
            raise LmlabError("this ELMo reads tokens, not characters; build it with char_cnn=True")
        self._check_chars()
        return self.token_chars[idx]

    # ------------------------------------------------------------ layers
    def token_vectors(self, idx: torch.Tensor | None = None,
                      chars: torch.Tensor | None = None) -> torch.Tensor:
        """Return the context-free token representations ``x_k`` ``(B, T, d_model)``.

        Give token ids ``idx (B, T)``, or for a char-CNN model the characters ``chars (B, T,
        max_chars)`` directly (any word, in the vocabulary or not).
        """
        if chars is not None:
            if self.char_cnn is None:
                raise LmlabError("this ELMo reads tokens, not characters; pass token ids")
            return self.char_cnn(chars)
        if idx is None:
            raise LmlabError("give token ids or (for a char-CNN ELMo) character ids")
        if idx.dim() != 2:
            raise LmlabError(f"ELMo expects token ids of shape (batch, time), got {tuple(idx.shape)}")
        if self.tok_emb is not None:
            return self.tok_emb(idx)
        # The CNN output depends only on the token, so run it once per distinct id of the batch.
        uniq, inverse = idx.unique(return_inverse=True)
        return self.char_cnn(self.chars_of(uniq))[inverse]

    def _run(self, stack: nn.ModuleList, x: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None
             ) -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]:
        """Run one direction's LSTM layers over ``x`` (B, T, d) from ``state`` (zeros when None).

        Returns each layer's output and the final state ``(h_1, c_1, h_2, c_2, ...)``.
        """
        outs, finals = [], []
        h = x
        for i, lstm in enumerate(stack):
            start = None if state is None else (state[2 * i].contiguous(), state[2 * i + 1].contiguous())
            with warnings.catch_warnings():
                # PyTorch notes that oneDNN has no projected LSTM and falls back: expected, not actionable.
                warnings.filterwarnings("ignore", message="LSTM with projections is not supported")
                out, (h_n, c_n) = lstm(self.drop(h), start)
            finals += [h_n, c_n]
            h = out + h if i > 0 else out  # residual connection from the second layer on
            outs.append(h)
        return outs, tuple(finals)

    def directions(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Return the forward and the backward layer outputs for token vectors ``x (B, T, d)``.

        The backward LM reads the sequence reversed; its outputs are flipped back so index t
        of both lists is token t (forward: has seen 0..t; backward: has seen t..T-1).
        """
        fwd = self._run(self.fwd, x)[0]
        bwd = [h.flip(1) for h in self._run(self.bwd, x.flip(1))[0]]
        return fwd, bwd

    def layers(self, idx: torch.Tensor | None = None, chars: torch.Tensor | None = None) -> torch.Tensor:
        """Return every layer's contextual vectors ``(n_layer + 1, B, T, 2 d_model)``.

        Layer 0 is ``[x_k; x_k]`` (the token representation twice), layer j the forward and
        backward LSTM outputs of layer j side by side.
        """
        x = self.token_vectors(idx, chars)
        fwd, bwd = self.directions(x)
        return torch.stack([torch.cat([x, x], dim=-1)] + [torch.cat(p, dim=-1) for p in zip(fwd, bwd)])

    def forward(self, idx: torch.Tensor, bidirectional: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Return the forward LM's next-token logits ``(B, T, V)`` for ids ``idx (B, T)``.

        With ``bidirectional`` also the backward LM's: ``(forward, backward)``, where
        backward position t scores the token at t-1.
        """
        x = self.token_vectors(idx)
        if not bidirectional:
            return self.head(self.drop(self._run(self.fwd, x)[0][-1]))
        fwd, bwd = self.directions(x)
        return self.head(self.drop(fwd[-1])), self.head(self.drop(bwd[-1]))

    def forward_lm(self, idx: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Run the forward LM over ids ``idx (B, T)`` from ``state``; return ``(logits (B, T, V), state)``.

        The state is the forward LSTMs' final ``(h, c)`` per layer, flattened to ``(h_1, c_1,
        h_2, c_2, ...)``, each ``(1, B, size)`` (None: zeros). Reading a sequence in pieces
        while carrying the state gives the logits of reading it at once, which is how
        :mod:`lmlab.generate` continues text one token at a time.
        """
        if state is not None:
            n = 2 * self.config.n_layer
            if len(state) != n or any(s.dim() != 3 or s.size(1) != idx.size(0) for s in state):
                got = [tuple(s.shape) for s in state]
                raise LmlabError(f"ELMo forward-LM state has shapes {got}; it needs {n} tensors (h, c per "
                                 f"layer) of shape (1, {idx.size(0)}, size): pass the state forward_lm "
                                 "returned for this batch")
        x = self.token_vectors(idx)
        outs, final = self._run(self.fwd, x, state)
        return self.head(self.drop(outs[-1])), final

    def num_params(self, non_embedding: bool = False) -> int:
        """Return the number of parameters (a tied matrix once); ``non_embedding`` leaves out the
        token embedding and an untied softmax matrix (the character CNN counts as non-embedding)."""
        params = {id(p): p for p in self.parameters()}
        n = sum(p.numel() for p in params.values())
        if non_embedding:
            if self.tok_emb is not None:
                n -= self.tok_emb.weight.numel()
            if self.tok_emb is None or not self.config.tie_embeddings:
                n -= self.head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:  # noqa: ARG002 - same signature as the decoder's
        """Return training FLOPs per token of the bidirectional objective: 6 x (LSTM and character
        CNN parameters, plus the softmax matrix once per direction)."""
        c = self.config
        return 6.0 * (self.num_params(non_embedding=True) + 2 * c.vocab_size * c.d_model)


def bilm_loss(model: nn.Module,
              batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ELMo's joint objective on a causal-LM batch: forward NLL + backward NLL (nats per token each).

    The window is ``input_ids`` plus the last label; the forward LM predicts each next
    token, the backward LM each previous one. Returns ``(sum, {"loss_fwd", "loss_bwd"})``.
    """
    seq = torch.cat([batch["input_ids"], batch["labels"][:, -1:]], dim=1)
    fwd_logits, bwd_logits = model(seq, bidirectional=True)
    fwd = token_cross_entropy(fwd_logits[:, :-1], seq[:, 1:])
    bwd = token_cross_entropy(bwd_logits[:, 1:], seq[:, :-1])
    return fwd + bwd, {"loss_fwd": fwd.detach(), "loss_bwd": bwd.detach()}


class ScalarMix(nn.Module):
    """ELMo's task-specific layer mix: ``gamma * sum_j softmax(w)_j * layer_j`` (eq. 1 of the paper).

    ``weights`` are the raw scalars w (one per layer; all 0 gives the plain average)
    and ``gamma`` the scale. They are learned with a downstream task, not by the biLM.
    """

    def __init__(self, n_layers: int, weights: list[float] | None = None, gamma: float = 1.0):
        super().__init__()
        if weights is not None and len(weights) != n_layers:
            raise LmlabError(f"got {len(weights)} mix weights for {n_layers} layers (token layer included); "
                             f"give {n_layers}")
        self.weights = nn.Parameter(torch.tensor(weights if weights is not None else [0.0] * n_layers,
                                                 dtype=torch.float32))
        self.gamma = nn.Parameter(torch.tensor(float(gamma)))

    def forward(self, layers: torch.Tensor) -> torch.Tensor:
        """Mix ``layers (L, ..., D)`` along the first dimension; return ``(..., D)``."""
        if layers.size(0) != self.weights.numel():
            raise LmlabError(f"ScalarMix has {self.weights.numel()} weights, got {layers.size(0)} layers")
        s = torch.softmax(self.weights, dim=0).to(layers.dtype)
        return self.gamma.to(layers.dtype) * torch.einsum("l,l...->...", s, layers)


_TINY_FILTERS = [[1, 16], [2, 16], [3, 32]]

# Preset name -> config values (vocab_size usually comes from the data).
PRESETS: dict[str, dict[str, Any]] = {
    "elmo-small": dict(n_layer=2, d_model=256, d_hidden=512, dropout=0.1, block_size=128),
    "elmo-char-small": dict(n_layer=2, d_model=256, d_hidden=512, char_cnn=True, max_chars=20, dropout=0.1,
                            block_size=128),
    "elmo-tiny": dict(n_layer=2, d_model=32, d_hidden=64, dropout=0.0, block_size=32),
    "elmo-char-tiny": dict(n_layer=2, d_model=32, d_hidden=64, char_cnn=True, max_chars=12, d_char=8,
                           filters=_TINY_FILTERS, n_highway=1, dropout=0.0, block_size=32),
}
