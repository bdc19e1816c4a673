"""Task heads: sequence classification and regression on any model family that has features.

A :class:`SequenceClassifier` holds ``.backbone``, an unchanged lmlab model, and ``.head``, a
small network on one feature vector per sequence; ``forward(input_ids, attention_mask)`` returns
logits ``(B, num_labels)`` (``(B, 1)`` for regression). Inputs are right-padded; the attention
mask (1 = real token, 0 = padding) says where each sequence ends. The feature per family:

- decoders (GPT, LLaMA, ...): the final hidden state of the last real token, after the final
  norm (GPT's classification). Attention is causal, so the padding after a sequence cannot
  reach its real tokens and the decoder runs without a mask (its fastest path).
- encoders (BERT, RoBERTa): BERT's pooler output ``tanh(W h_[CLS])`` when the model has a
  pooler, else the [CLS] (first, RoBERTa's ``<s>``) hidden state; the mask keeps padding out of
  attention.
- RNN/LSTM/GRU: ULMFiT's concat pooling ``[h_T, max_t h_t, mean_t h_t]`` of the last layer's
  outputs over the real tokens (Howard & Ruder 2018, 3.3).

``pooling`` may pick another of these (``last``, ``mean``, ``cls``, ``pooler``, ``concat``)
where it makes sense for the family. The classifier is a model family of its own in the
registry (``classifier``): its config holds the backbone's family and config, so a saved
classifier reloads with ``lmlab.load`` like any model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lmlab.config import DictConfig
from lmlab.errors import LmlabError
from lmlab.models.decoder import Decoder, DecoderConfig
from lmlab.models.encoder import Encoder, EncoderConfig
from lmlab.models.rnn import RNNLM, RNNConfig
from lmlab.nn.linear import Linear

ARCH = "classifier"
TASKS = ("classify", "regress")
# The families with a task head: arch -> (config class, model class, poolings, default pooling).
BACKBONES: dict[str, tuple[type, type, tuple[str, ...], str]] = {
    "decoder": (DecoderConfig, Decoder, ("last", "mean"), "last"),
    "encoder": (EncoderConfig, Encoder, ("pooler", "cls", "mean"), "pooler"),
    "rnn": (RNNConfig, RNNLM, ("concat", "last", "mean"), "concat"),
}
HEAD_NORMS = ("none", "batchnorm")
HAVE_HEADS = "decoder (GPT-2, LLaMA, ...), encoder (BERT, RoBERTa) and rnn (RNN, LSTM, GRU)"


@dataclass
class ClassifierConfig(DictConfig):
    """A sequence classifier (or regressor): the backbone's family and config, and the head.

    ``labels``: the class names (index = class id; ignored for ``task: regress``, which predicts
    one number). ``pooling``: ``auto`` (the family's own, see the module docstring) or one of
    ``last``, ``mean``, ``cls``, ``pooler``, ``concat``. ``head_hidden``: 0 for one linear layer
    on the features, else the width of a hidden ReLU layer. ``dropout``: on the features (and
    the hidden layer). ``head_norm``: ``batchnorm`` puts batch normalisation before each of the
    head's linear layers, as ULMFiT's classifier (Howard & Ruder sec. 3.3; an LSTM's pooled
    features vary little between sentences and a plain head barely learns from them), or
    ``none``. ``head_std``: the standard deviation of the head's initial weights (GPT's 0.02; a
    reward model's scalar head uses 1/sqrt(d_model + 1), as Stiennon et al. 2020 and TRL).
    """

    backbone_arch: str = "decoder"
    backbone: dict[str, Any] = field(default_factory=dict)
    task: str = "classify"
    labels: list[str] = field(default_factory=lambda: ["negative", "positive"])
    pooling: str = "auto"
    head_hidden: int = 0
    dropout: float = 0.1
    head_norm: str = "none"
    head_std: float = 0.02

    def __post_init__(self) -> None:
        if self.backbone_arch not in BACKBONES:
            raise LmlabError(f"the {self.backbone_arch} model family has no task head yet; the families "
                             f"with one are {HAVE_HEADS}")
        if self.task not in TASKS:
            raise LmlabError(f"task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.task == "classify" and len(self.labels) < 2:
            raise LmlabError(f"a classifier needs at least two labels, got {self.labels}")
        poolings, default = BACKBONES[self.backbone_arch][2:]
        has_pooler = bool(self.backbone.get("pooler") or self.backbone.get("nsp"))
        if self.pooling == "auto":
            self.pooling = "cls" if default == "pooler" and not has_pooler else default
        if self.pooling not in poolings:
            raise LmlabError(f"pooling {self.pooling!r} does not apply to a {self.backbone_arch}; "
                             f"choose auto or one of {', '.join(poolings)}")
        if self.pooling == "pooler" and not has_pooler:
            raise LmlabError("pooling 'pooler' needs an encoder with BERT's pooler (RoBERTa has none); "
                             "use pooling cls or auto")
        if self.head_norm not in HEAD_NORMS:
            raise LmlabError(f"head_norm {self.head_norm!r} is not one of {', '.join(HEAD_NORMS)}")
        if not self.head_std > 0:
            raise LmlabError(f"head_std must be positive (got {self.head_std})")
        if self.head_hidden < 0 or not 0.0 <= self.dropout < 1.0:
            raise LmlabError(f"head_hidden must be >= 0 and dropout in [0, 1) (got {self.head_hidden}, "
                             f"{self.dropout})")

    @property
    def num_outputs(self) -> int:
        """Outputs of the head: one per label, or 1 for regression."""
        return len(self.labels) if self.task == "classify" else 1


def backbone_arch(model: nn.Module) -> str:
    """Return the family of ``model`` among those with a task head; LmlabError naming them if none."""
    for arch, (_, cls, _, _) in BACKBONES.items():
        if isinstance(model, cls):
            return arch
    raise LmlabError(f"a {type(model).__name__} has no task head yet; the model families with one are "
                     f"{HAVE_HEADS}")


class SequenceClassifier(nn.Module):
    """``.backbone`` (an lmlab model) + ``.head``: token ids ``(B, T)`` -> logits ``(B, outputs)``."""

    def __init__(self, config: ClassifierConfig, backbone: nn.Module | None = None):
        super().__init__()
        self.config = c = config
        config_cls, model_cls = BACKBONES[c.backbone_arch][:2]
        if backbone is None:
            backbone = model_cls(config_cls.from_dict(c.backbone))
        elif not isinstance(backbone, model_cls):
            raise LmlabError(f"the classifier config says a {c.backbone_arch} backbone, got a "
                             f"{type(backbone).__name__}")
        self.backbone = backbone
        widths = [self.feature_dim] + ([c.head_hidden] if c.head_hidden else []) + [c.num_outputs]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            if i:
                layers.append(nn.ReLU())
            if c.head_norm == "batchnorm":
                layers.append(nn.BatchNorm1d(a))
            layers += [nn.Dropout(c.dropout), Linear(a, b)]
        self.head = nn.Sequential(*layers)
        self.reset_head()

    @property
    def feature_dim(self) -> int:
        """Width of the feature vector the head reads."""
        bc = self.backbone.config
        if self.config.backbone_arch == "rnn":
            return bc.d_hidden * (3 if self.config.pooling == "concat" else 1)
        return bc.d_model

    def reset_head(self) -> None:
        """Initialise the head: weights N(0, ``config.head_std``), biases 0."""
        for m in self.head.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, self.config.head_std)
                nn.init.zeros_(m.bias)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Return one feature vector per sequence ``(B, feature_dim)`` (see the module docstring)."""
        arch, pooling, b = self.config.backbone_arch, self.config.pooling, self.backbone
        mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                else attention_mask.to(device=input_ids.device, dtype=torch.bool))
        if arch == "encoder":
            h = b.hidden_states(input_ids, None if attention_mask is None else mask.long())
        else:  # causal decoders and RNNs: right padding cannot reach the real tokens
            h = b.hidden_states(input_ids)
        if pooling == "pooler":
            return b.pooled(h)
        if pooling == "cls":
            return h[:, 0]
        m = mask.unsqueeze(-1).to(h.dtype)
        mean = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        if pooling == "mean":
            return mean
        last = h[torch.arange(h.size(0), device=h.device), (mask.sum(1) - 1).clamp(min=0)]
        if pooling == "last":
            return last
        biggest = h.masked_fill(~mask.unsqueeze(-1), torch.finfo(h.dtype).min).amax(1)
        return torch.cat([last, biggest, mean], dim=-1)  # ULMFiT's concat pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Return logits ``(B, num_labels)`` (regression: ``(B, 1)``) for right-padded ``input_ids``."""
        return self.head(self.features(input_ids, attention_mask))

    def num_params(self, non_embedding: bool = False) -> int:
        """Return the number of parameters: the backbone's (see its ``num_params``) plus the head's."""
        return self.backbone.num_params(non_embedding) + sum(p.numel() for p in self.head.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Return training FLOPs per token: the backbone's (its output layer included, an upper bound)."""
        return self.backbone.flops_per_token(seq_len)


def classifier_for(backbone: nn.Module, task: str = "classify", labels: list[str] | None = None,
                   pooling: str = "auto", head_hidden: int = 0, dropout: float = 0.1,
                   head_norm: str = "none", head_std: float = 0.02) -> SequenceClassifier:
    """Return a :class:`SequenceClassifier` on ``backbone`` (kept as it is) with a new head.

    Raises LmlabError for a model family that has no head, naming those that have one.
    """
    arch = backbone_arch(backbone)
    config = ClassifierConfig(backbone_arch=arch, backbone=backbone.config.to_dict(), task=task,
                              labels=list(labels or ["negative", "positive"]), pooling=pooling,
                              head_hidden=head_hidden, dropout=dropout, head_norm=head_norm,
                              head_std=head_std)
    return SequenceClassifier(config, backbone)
