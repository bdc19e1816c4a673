"""Parameter counts, FLOPs per token and model FLOPs utilisation of decoder-only Transformers.

Everything here is computed analytically from a :class:`~lmlab.models.decoder.DecoderConfig`
(no model is built), so it works for any size; the tests check the parameter counts
against ``Decoder(cfg).num_params()`` for every preset.

Parameters (:func:`count_params`):

* ``total``: every parameter once (a tied output head shares the token embedding).
* ``non_embedding``: Kaplan et al.'s N, the total without the token embedding, learned
  position embeddings and an untied output head (as ``Decoder.num_params(non_embedding=True)``).
  Norm gains and biases are included.

FLOPs (:func:`flop_counts`), each as forward and training (forward + backward) FLOPs,
per token and per sequence of ``seq_len`` tokens:

* ``6N``: training = 6 N per token, N the non-embedding parameters (Kaplan et al. 2020,
  sec. 2.1); forward = 2 N.
* ``kaplan``: Kaplan et al. 2020, Table 1: C_forward = 2 N + 2 n_layer n_ctx d_attn per
  token with n_ctx = ``seq_len`` and d_attn = n_head * head_dim; training = 3 C_forward. N is
  the exact non-embedding count (the paper's N = 2 d_model n_layer (2 d_attn + d_ff) leaves
  out biases and norms and assumes full-width keys and values). The output head (2 d_model
  vocab) is left out, as in the paper's total.
* ``chinchilla``: Hoffmann et al. 2022, Appendix F, per sequence of length ``seq``:
  embeddings 2 seq vocab d_model; per layer the K/Q/V projections, the key@query logits
  2 seq^2 (key_size n_heads), the softmax 3 n_heads seq^2, the softmax@value reduction
  2 seq^2 (key_size n_heads), the output projection 2 seq (key_size n_heads) d_model and the
  dense block 2 seq (d_model ffw + ffw d_model) (three matrices for SwiGLU: 2 seq 3 d_model ffw);
  final logits 2 seq d_model vocab. Backward = 2 x forward. Embeddings are counted as a
  matmul whether or not the head is tied; norms, biases, activations and positions are left
  out, as in the paper.
* ``palm``: PaLM (Chowdhery et al. 2022, App. B), what ``Decoder.flops_per_token`` and the
  MFU in ``lmlab pretrain`` use: training = 6 (N + vocab d_model) + 12 n_layer n_head head_dim
  seq_len per token (the output head is a matmul even when tied; attention over the full
  context, the causal mask not subtracted).

Grouped-query attention (GQA/MQA, ``n_kv_heads < n_head``): the K/Q/V projection of the
Chinchilla count is 2 seq d_model (n_head + 2 n_kv_heads) head_dim (queries for every head,
keys and values only for the KV heads: exactly the matmul the model runs); the logits, the
softmax and the reduction keep ``n_head``, because every query head still attends over the
whole sequence (the shared keys/values are read, not recomputed). The parameter-based counts
(6N, Kaplan, PaLM) see GQA through N, whose QKV matrix is d_model x (n_head + 2 n_kv_heads)
head_dim; their attention terms use d_attn = n_head head_dim.

Multi-head Latent Attention (``attn="mla"``, DeepSeek-V2): the parameters are its projections
(``q`` or ``q_a``/``q_b`` with the query norm, ``kv_a``, the latent norm, ``kv_b``, the output);
the Chinchilla QKV term is those projections' matmuls per token (``kv_b`` applied to every
token, as in training); scores are ``qk_nope_head_dim + qk_rope_head_dim`` wide and values
``v_head_dim``, so the parameter-based counts use d_attn = n_head (d_qk + d_v) / 2 (equal to
n_head head_dim when both widths are head_dim).

Check against the paper: Appendix F's Table A4 ratios of its count to 6 N D (1.03 for its
73M model ... 0.99 for 6.8B) are reproduced by the per-layer terms alone at seq 2048 (the
embedding and logit terms left out); with them the ratios of small models would be far
larger. :meth:`FlopCounts.chinchilla_layers` gives that figure.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from lmlab.device import PEAK_FLOPS
from lmlab.errors import LmlabError
from lmlab.models.decoder import DecoderConfig

METHODS = ("6N", "kaplan", "chinchilla", "palm")


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of a decoder, computed from its config."""

    total: int  # every parameter once; a tied head is the token embedding
    non_embedding: int  # Kaplan's N: total - token embedding - learned positions - untied head
    token_embedding: int  # vocab_size * d_model
    position_embedding: int  # block_size * d_model for learned positions, else 0
    lm_head: int  # vocab_size * d_model when untied, 0 when tied
    attention_per_layer: int  # QKV + output projection (+ biases)
    mlp_per_layer: int  # GELU MLP or SwiGLU (+ biases)
    norms_per_layer: int  # the two pre-norms
    final_norm: int
    n_layer: int

    @property
    def per_layer(self) -> int:
        """Parameters of one block (attention, MLP and its two norms)."""
        return self.attention_per_layer + self.mlp_per_layer + self.norms_per_layer

    @property
    def embedding(self) -> int:
        """The parameters left out of N: token and learned-position embeddings and an untied head."""
        return self.total - self.non_embedding

    def as_dict(self) -> dict[str, int]:
        """Return the counts (and ``per_layer``, ``embedding``) as a plain dict."""
        return asdict(self) | {"per_layer": self.per_layer, "embedding": self.embedding}


def _norm_params(cfg: DecoderConfig) -> int:
    """Parameters of one norm: a gain, plus a bias for LayerNorm with biases (RMSNorm has none)."""
    return cfg.d_model * (2 if cfg.norm == "layernorm" and cfg.bias else 1)


def _resolved(cfg: DecoderConfig) -> tuple[int, int, int]:
    """Return ``(n_kv_heads, head_dim, d_ff)``, which DecoderConfig resolves in __post_init__."""
    if cfg.n_kv_heads is None or cfg.head_dim is None or cfg.d_ff is None:
        raise LmlabError("the decoder config has unresolved n_kv_heads/head_dim/d_ff; build it with "
                         "DecoderConfig(...) or get_preset(...), which fill them in")
    return int(cfg.n_kv_heads), int(cfg.head_dim), int(cfg.d_ff)


def _mla_projection_params(cfg: DecoderConfig) -> tuple[int, int]:
    """Return ``(weights and norm gains, biases)`` of an MLA layer's projections besides the output's
    weight (see :class:`~lmlab.nn.mla.MultiHeadLatentAttention`)."""
    d, h = cfg.d_model, cfg.n_head
    q_out = h * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim)
    latent = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    if cfg.q_lora_rank is None:
        weights, biases = d * q_out, 0
    else:
        weights, biases = d * cfg.q_lora_rank + cfg.q_lora_rank + cfg.q_lora_rank * q_out, cfg.q_lora_rank
    weights += d * latent + cfg.kv_lora_rank + cfg.kv_lora_rank * h * (cfg.qk_nope_head_dim + cfg.v_head_dim)
    return weights, biases + latent


def attention_width(cfg: DecoderConfig) -> float:
    """Return d_attn, the attention width of the parameter-based FLOP counts: ``n_head head_dim``, or
    ``n_head (d_qk + d_v) / 2`` for MLA (scores and values of different widths)."""
    if cfg.attn == "mla":
        return cfg.n_head * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim) / 2
    return float(cfg.n_head * _resolved(cfg)[1])


def count_params(cfg: DecoderConfig) -> ParamCounts:
    """Count the parameters of ``Decoder(cfg)`` from the config alone; return :class:`ParamCounts`.

    Block: two norms, a fused QKV projection ``d_model x (n_head + 2 n_kv_heads) head_dim``, an
    output projection ``n_head head_dim x d_model``, and a GELU MLP (``d_model x d_ff`` twice) or
    a SwiGLU (three such matrices); biases on every linear of the block when ``bias``. Then a
    final norm, the token embedding, learned positions (``block_size x d_model``; RoPE and
    sinusoidal positions have no parameters) and a bias-free head, shared when tied.
    """
    n_kv, hd, d_ff = _resolved(cfg)
    d, b = cfg.d_model, int(cfg.bias)
    if cfg.attn == "mla":
        weights, biases = _mla_projection_params(cfg)
        attention = weights + b * biases + cfg.n_head * cfg.v_head_dim * d + b * d
    else:
        qkv_out = (cfg.n_head + 2 * n_kv) * hd
        attention = d * qkv_out + b * qkv_out + cfg.n_head * hd * d + b * d
    if cfg.mlp == "gelu":
        mlp = 2 * d * d_ff + b * (d_ff + d)
    else:
        mlp = 3 * d * d_ff + b * (2 * d_ff + d)
    norms = 2 * _norm_params(cfg)
    final_norm = _norm_params(cfg)
    if cfg.attn == "infini":
        attention += cfg.n_head + (cfg.n_kv_heads if cfg.memory_scale else 0)  # gate (+ memory scale)
    tok = cfg.vocab_size * d
    pos = cfg.block_size * d if cfg.pos == "learned" else 0
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * d
    non_embedding = cfg.n_layer * (attention + mlp + norms) + final_norm
    return ParamCounts(total=non_embedding + tok + pos + head, non_embedding=non_embedding,
                       token_embedding=tok, position_embedding=pos, lm_head=head,
                       attention_per_layer=attention, mlp_per_layer=mlp, norms_per_layer=norms,
                       final_norm=final_norm, n_layer=cfg.n_layer)


@dataclass(frozen=True)
class FlopCount:
    """One way of counting FLOPs: forward and training (forward + backward), per token and per sequence."""

    method: str
    seq_len: int
    forward_per_sequence: float
    train_per_sequence: float

    @property
    def forward_per_token(self) -> float:
        """Forward FLOPs per token (per sequence / seq_len)."""
        return self.forward_per_sequence / self.seq_len

    @property
    def train_per_token(self) -> float:
        """Training FLOPs per token, forward + backward (per sequence / seq_len)."""
        return self.train_per_sequence / self.seq_len

    def as_dict(self) -> dict[str, Any]:
        """Return the four figures (per token and per sequence, forward and training) as a dict."""
        return {"method": self.method, "seq_len": self.seq_len, "forward_per_token": self.forward_per_token,
                "train_per_token": self.train_per_token, "forward_per_sequence": self.forward_per_sequence,
                "train_per_sequence": self.train_per_sequence}


def _per_token(method: str, forward_per_token: float, seq_len: int) -> FlopCount:
    """A count given as forward FLOPs per token, with backward = 2 x forward."""
    fwd = forward_per_token * seq_len
    return FlopCount(method, seq_len, fwd, 3.0 * fwd)


def chinchilla_terms(cfg: DecoderConfig, seq_len: int) -> dict[str, float]:
    """Return Hoffmann et al. 2022 Appendix F's forward FLOPs per sequence of ``seq_len`` tokens by part.

    Keys: ``embeddings``, per-layer ``attention_qkv``, ``attention_logits``, ``attention_softmax``,
    ``attention_reduce``, ``attention_project``, ``dense`` (each for ONE layer), and ``logits``.
    GQA: the QKV projection counts (n_head + 2 n_kv_heads) head_dim outputs; logits, softmax and
    reduction keep n_head (see the module docstring).
    """
    n_kv, hd, d_ff = _resolved(cfg)
    s, d, v, h = float(_check_seq_len(seq_len)), float(cfg.d_model), float(cfg.vocab_size), cfg.n_head
    d_qk = d_v = float(h * hd)
    qkv_macs = d * (h + 2 * n_kv) * hd
    if cfg.attn == "mla":  # the projections' matmuls (norm gains are not matmuls)
        d_qk, d_v = float(h * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim)), float(h * cfg.v_head_dim)
        q_lora = cfg.q_lora_rank or 0
        qkv_macs = _mla_projection_params(cfg)[0] - q_lora - cfg.kv_lora_rank
    dense_mats = 2 if cfg.mlp == "gelu" else 3
    return {
        "embeddings": 2.0 * s * v * d,
        "attention_qkv": 2.0 * s * qkv_macs,
        "attention_logits": 2.0 * s * s * d_qk,
        "attention_softmax": 3.0 * h * s * s,
        "attention_reduce": 2.0 * s * s * d_v,
        "attention_project": 2.0 * s * d_v * d,
        "dense": 2.0 * s * dense_mats * d * d_ff,
        "logits": 2.0 * s * d * v,
    }


def _check_seq_len(seq_len: int) -> int:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise LmlabError(f"seq_len must be a positive integer number of tokens, got {seq_len!r}")
    return seq_len


LAYER_TERMS = ("attention_qkv", "attention_logits", "attention_softmax", "attention_reduce",
               "attention_project", "dense")


@dataclass(frozen=True)
class FlopCounts:
    """Parameter counts and the four FLOP counts of one decoder config at one sequence length."""

    seq_len: int
    params: ParamCounts
    six_n: FlopCount
    kaplan: FlopCount
    chinchilla: FlopCount
    palm: FlopCount
    chinchilla_forward_terms: dict[str, float] = field(default_factory=dict)  # per sequence, per layer

    @property
    def counts(self) -> dict[str, FlopCount]:
        """The four counts by method name: ``6N``, ``kaplan``, ``chinchilla``, ``palm``."""
        return {"6N": self.six_n, "kaplan": self.kaplan, "chinchilla": self.chinchilla, "palm": self.palm}

    def ratio_to_6n(self, method: str) -> float:
        """Return a method's training FLOPs divided by 6N (N non-embedding)."""
        return self.counts[method].train_per_token / self.six_n.train_per_token

    @property
    def chinchilla_layers(self) -> FlopCount:
        """The Chinchilla count of the Transformer layers only (embeddings and logits left out),
        which is what the paper's Table A4 compares with 6 N D."""
        t = self.chinchilla_forward_terms
        fwd = self.params.n_layer * sum(t[k] for k in LAYER_TERMS)
        return FlopCount("chinchilla-layers", self.seq_len, fwd, 3.0 * fwd)

    def as_dict(self) -> dict[str, Any]:
        """Return params, each count (with its ratio to 6N) and the Chinchilla terms as a JSON-ready dict."""
        return {
            "seq_len": self.seq_len,
            "params": self.params.as_dict(),
            "flops": {m: c.as_dict() | {"ratio_to_6n": self.ratio_to_6n(m)} for m, c in self.counts.items()},
            "chinchilla_forward_per_sequence": dict(self.chinchilla_forward_terms),
        }


def flop_counts(cfg: DecoderConfig, seq_len: int | None = None) -> FlopCounts:
    """Count the parameters and the FLOPs of ``Decoder(cfg)`` at context ``seq_len`` (default: block_size).

    Returns :class:`FlopCounts` with the 6N, Kaplan (Table 1), Chinchilla (Appendix F) and PaLM
    counts, each forward and training, per token and per sequence (see the module docstring).
    """
    seq = _check_seq_len(cfg.block_size if seq_len is None else seq_len)
    params = count_params(cfg)
    n = float(params.non_embedding)
    d_attn = attention_width(cfg)
    six_n = _per_token("6N", 2.0 * n, seq)
    kaplan = _per_token("kaplan", 2.0 * n + 2.0 * cfg.n_layer * seq * d_attn, seq)
    terms = chinchilla_terms(cfg, seq)
    fwd = terms["embeddings"] + cfg.n_layer * sum(terms[k] for k in LAYER_TERMS) + terms["logits"]
    chinchilla = FlopCount("chinchilla", seq, fwd, 3.0 * fwd)
    head = float(cfg.vocab_size * cfg.d_model)
    palm = _per_token("palm", 2.0 * (n + head) + 4.0 * cfg.n_layer * d_attn * seq, seq)
    return FlopCounts(seq, params, six_n, kaplan, chinchilla, palm, terms)


def train_flops_per_token(cfg: DecoderConfig, seq_len: int | None = None,
                          method: str = "chinchilla") -> float:
    """Return training FLOPs per token (forward + backward) of ``cfg`` by ``method`` (6N, kaplan,
    chinchilla or palm) at context ``seq_len`` (default: block_size)."""
    if method not in METHODS:
        raise LmlabError(f"unknown FLOP count {method!r}; use one of {', '.join(METHODS)}")
    return flop_counts(cfg, seq_len).counts[method].train_per_token


def resolve_peak_flops(value: str | float) -> tuple[float, str]:
    """Return ``(FLOP/s, label)`` for a number (``989e12``) or a name from :data:`PEAK_FLOPS`
    (``h100-sxm-bf16``, case-insensitive); anything else raises LmlabError listing the names."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
        label = f"{number:.4g} FLOP/s"
    else:
        text = str(value).strip()
        key = text.lower()
        if key in PEAK_FLOPS:
            return PEAK_FLOPS[key], key
        try:
            number = float(text)
        except ValueError:
            raise LmlabError(f"--peak-flops {text!r} is neither a number of FLOP/s (e.g. 989e12) nor a "
                             f"known device: {', '.join(PEAK_FLOPS)}") from None
        label = f"{number:.4g} FLOP/s"
    if not math.isfinite(number) or number <= 0:
        raise LmlabError(f"--peak-flops must be a positive number of FLOP/s, got {value!r}; e.g. 989e12")
    return number, label
