"""The KV-cache ledger: what each attention kind caches per token, and in total, for one model shape.

Elements cached per token (DeepSeek-V2, arXiv 2405.04434, Table 1), ``l`` layers:

* MHA ``2 n_h d_h l``: a key and a value of ``d_h`` for each of the ``n_h`` heads;
* GQA ``2 n_g d_h l``: one key and value per group of query heads (``n_g`` = ``n_kv_heads``);
* MQA ``2 d_h l``: one key and value shared by every head;
* MLA ``(d_c + d_h^R) l``: the compressed latent ``c_KV`` (``d_c`` = ``kv_lora_rank``) and the
  decoupled RoPE key ``k_R`` (``d_h^R`` = ``qk_rope_head_dim``), shared by every head.

A cache for ``batch`` rows of ``context`` positions holds ``batch x context`` times that many
elements, at 4 (fp32) or 2 (bf16, fp16) bytes each. The cache allocates every position up front
(:meth:`~lmlab.models.decoder.Decoder.new_kv_cache`), so these are the bytes it holds, not
only those written.

Besides the model's own kind, the ledger sets the other kinds beside it at equal ``d_model``: the
same ``n_layer``, ``n_head`` and head width ``d_h`` (``head_dim``), GQA with the model's own
``n_g`` (or ``gqa_groups``, default the largest divisor of ``n_head`` up to 8, as LLaMA 2 70B
and LLaMA 3), MLA with DeepSeek-V2's ratios ``d_c = 4 d_h`` and ``d_h^R = d_h / 2`` (rounded
down to an even width, for RoPE). :func:`measure_kv_bytes` builds each kind's real cache and sums
its ``nbytes``, which the tests hold equal to the formula.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from lmlab.errors import LmlabError
from lmlab.models.decoder import DecoderConfig

KINDS = ("mha", "gqa", "mqa", "mla")
FORMULAS = {"mha": "2 n_h d_h l", "gqa": "2 n_g d_h l", "mqa": "2 d_h l", "mla": "(d_c + d_h^R) l"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_MLA_FIELDS = ("q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")


def attention_kind(cfg: DecoderConfig) -> str:
    """Return the ledger's name for the config's attention: mha, gqa, mqa (by ``n_kv_heads``) or mla."""
    if cfg.attn == "mla":
        return "mla"
    if cfg.attn != "mha":
        raise LmlabError(f"the KV-cache ledger covers MHA, GQA, MQA and MLA; attn={cfg.attn} keeps a "
                         "fixed-size state instead of a cache that grows with the context")
    if cfg.n_kv_heads == cfg.n_head:
        return "mha"
    return "mqa" if cfg.n_kv_heads == 1 else "gqa"


def kv_terms(cfg: DecoderConfig) -> tuple[str, dict[str, int]]:
    """Return ``(kind, terms)``: the attention kind and the values of its formula's symbols
    (``n_h``, ``n_g``, ``d_h``, ``d_c``, ``d_h^R``, ``l``; see :data:`FORMULAS`)."""
    kind = attention_kind(cfg)
    if kind == "mla":
        terms = {"d_c": cfg.kv_lora_rank, "d_h^R": cfg.qk_rope_head_dim}
    elif kind == "mha":
        terms = {"n_h": cfg.n_head, "d_h": cfg.head_dim}
    elif kind == "gqa":
        terms = {"n_g": cfg.n_kv_heads, "d_h": cfg.head_dim}
    else:
        terms = {"d_h": cfg.head_dim}
    return kind, {k: int(v) for k, v in terms.items()} | {"l": cfg.n_layer}


def elements_per_token_per_layer(kind: str, terms: dict[str, int]) -> int:
    """Return the cached elements per token per layer of ``kind`` (DeepSeek-V2 Table 1, without l)."""
    if kind == "mha":
        return 2 * terms["n_h"] * terms["d_h"]
    if kind == "gqa":
        return 2 * terms["n_g"] * terms["d_h"]
    if kind == "mqa":
        return 2 * terms["d_h"]
    return terms["d_c"] + terms["d_h^R"]


def default_gqa_groups(n_head: int) -> int | None:
    """Return the KV groups of the GQA comparison: the largest divisor of ``n_head`` in [2, 8] that is
    below ``n_head`` (8 for 32 or 64 heads, as LLaMA 2 70B and LLaMA 3), None when there is none."""
    return next((g for g in range(min(8, n_head - 1), 1, -1) if n_head % g == 0), None)


def mla_ratios(head_dim: int) -> tuple[int, int]:
    """Return DeepSeek-V2's ``(d_c, d_h^R) = (4 d_h, d_h / 2)`` for a head width, d_h^R rounded down to
    an even number (at least 2) as RoPE needs."""
    return 4 * head_dim, max(2, head_dim // 4 * 2)


def kind_config(cfg: DecoderConfig, kind: str, gqa_groups: int | None = None) -> DecoderConfig:
    """Return ``cfg`` with its attention changed to ``kind`` at the same d_model, n_layer, n_head and
    head_dim: MHA, GQA with ``gqa_groups`` KV heads, MQA, or MLA with DeepSeek-V2's ratios (and RoPE
    positions, which MLA needs; an MLA ``cfg`` keeps its own d_c and d_h^R)."""
    if kind not in KINDS:
        raise LmlabError(f"unknown attention kind {kind!r}; use one of {', '.join(KINDS)}")
    values: dict[str, Any] = cfg.to_dict() | {"head_dim": cfg.head_dim}
    if kind == "mla":
        if cfg.attn == "mla":
            return cfg
        d_c, d_r = mla_ratios(int(cfg.head_dim))
        values |= {"attn": "mla", "n_kv_heads": None, "kv_lora_rank": d_c, "qk_rope_head_dim": d_r,
                   "qk_nope_head_dim": cfg.head_dim, "v_head_dim": cfg.head_dim, "q_lora_rank": None}
        if cfg.pos != "rope":
            values |= {"pos": "rope", "rope_scaling": None}
        return DecoderConfig.from_dict(values)
    if kind == "gqa":
        if gqa_groups is None:
            raise LmlabError(f"GQA needs its number of KV groups: give --gqa-groups, a divisor of "
                             f"n_head={cfg.n_head} between 2 and {cfg.n_head - 1}")
        if not 1 < gqa_groups < cfg.n_head or cfg.n_head % gqa_groups:
            raise LmlabError(f"--gqa-groups {gqa_groups} must divide n_head={cfg.n_head} and lie strictly "
                             "between 1 (MQA) and n_head (MHA)")
    n_kv = {"mha": cfg.n_head, "gqa": gqa_groups, "mqa": 1}[kind]
    values |= {"attn": "mha", "n_kv_heads": n_kv} | dict.fromkeys(_MLA_FIELDS)
    return DecoderConfig.from_dict(values)


@dataclass(frozen=True)
class KVRow:
    """One attention kind's cache at one batch, context and dtype: the formula, its values, the sizes."""

    kind: str
    own: bool  # the model's own attention (else a comparison at equal d_model)
    terms: dict[str, int]
    batch: int
    context: int
    bytes_per_element: int
    config: DecoderConfig
    measured_bytes: int | None = None

    @property
    def formula(self) -> str:
        """DeepSeek-V2 Table 1's formula of elements per token, e.g. ``2 n_g d_h l``."""
        return FORMULAS[self.kind]

    @property
    def substituted(self) -> str:
        """The formula with its values, e.g. ``2 x 8 x 128 x 32``."""
        t = self.terms
        if self.kind == "mla":
            return f"({t['d_c']} + {t['d_h^R']}) x {t['l']}"
        return " x ".join(["2", *(str(t[k]) for k in ("n_h", "n_g", "d_h", "l") if k in t)])

    @property
    def elements_per_token_per_layer(self) -> int:
        """Cached elements per token in one layer."""
        return elements_per_token_per_layer(self.kind, self.terms)

    @property
    def elements_per_token(self) -> int:
        """Cached elements per token over all layers (the formula's value)."""
        return self.elements_per_token_per_layer * self.terms["l"]

    @property
    def bytes_per_token(self) -> int:
        """Cached bytes per token over all layers."""
        return self.elements_per_token * self.bytes_per_element

    @property
    def elements_total(self) -> int:
        """Elements of the whole cache: ``batch x context`` tokens."""
        return self.elements_per_token * self.batch * self.context

    @property
    def bytes_total(self) -> int:
        """Bytes of the whole cache: ``batch x context`` tokens."""
        return self.elements_total * self.bytes_per_element

    def as_dict(self) -> dict[str, Any]:
        """Return the row as a JSON-ready dict (formula, values, sizes, measured bytes when measured)."""
        out = {"kind": self.kind, "own": self.own, "formula": self.formula, "terms": dict(self.terms),
               "substituted": self.substituted,
               "elements_per_token_per_layer": self.elements_per_token_per_layer,
               "elements_per_token": self.elements_per_token, "bytes_per_token": self.bytes_per_token,
               "elements_total": self.elements_total, "bytes_total": self.bytes_total}
        if self.measured_bytes is not None:
            out |= {"measured_bytes": self.measured_bytes,
                    "measured_equals_formula": self.measured_bytes == self.bytes_total}
        return out


@dataclass(frozen=True)
class KVLedger:
    """The cache of a model's own attention kind and of the other kinds at equal d_model."""

    batch: int
    context: int
    dtype: str
    rows: tuple[KVRow, ...]

    @property
    def own(self) -> KVRow:
        """The row of the model's own attention."""
        return next(r for r in self.rows if r.own)

    def ratio_to_mha(self, row: KVRow) -> float:
        """Return a row's bytes over those of the MHA row (MHA = 1)."""
        mha = next(r for r in self.rows if r.kind == "mha")
        return row.bytes_total / mha.bytes_total

    @property
    def measured(self) -> bool:
        """Whether every row's cache was measured."""
        return all(r.measured_bytes is not None for r in self.rows)

    def as_dict(self) -> dict[str, Any]:
        """Return the ledger as a JSON-ready dict: batch, context, dtype and one entry per kind."""
        return {"batch": self.batch, "context": self.context, "dtype": self.dtype,
                "bytes_per_element": self.rows[0].bytes_per_element,
                "kinds": [r.as_dict() | {"ratio_to_mha": self.ratio_to_mha(r)} for r in self.rows]}


def check_context(cfg: DecoderConfig, context: int) -> int:
    """Return ``context`` if the model's positions reach it without more scaling; else raise LmlabError
    naming the limit (the block size: the learned or sinusoidal table's rows, or the RoPE context the
    model was built for, stretched already when it has rope_scaling)."""
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise LmlabError(f"--context must be a positive number of tokens, got {context!r}")
    limit = cfg.block_size
    if context <= limit:
        return context
    if cfg.pos != "rope":
        raise LmlabError(f"--context {context} exceeds the {limit} positions of the model's {cfg.pos} "
                         f"position table (block_size); use --context {limit} or less, or --model-args "
                         f"block_size={context} for a model built that long")
    if cfg.rope_scaling:
        scaling = f"RoPE already scaled by rope_scaling (factor {cfg.rope_scaling.get('factor')})"
        fix = f"--model-args block_size={context} only for a model trained or scaled that far"
    else:
        scaling = "RoPE without rope_scaling"
        fix = (f"--model-args block_size={context} for a model trained that long, or add rope_scaling "
               "(e.g. rope_scaling='{rope_type: linear, factor: 8}') to stretch it")
    raise LmlabError(f"--context {context} exceeds the model's context of {limit} tokens (block_size, "
                     f"{scaling}); use --context {limit} or less, or {fix}")


def _row(cfg: DecoderConfig, own: bool, batch: int, context: int, dtype: str) -> KVRow:
    kind, terms = kv_terms(cfg)
    return KVRow(kind, own, terms, batch, context, DTYPES[dtype].itemsize, cfg)


def kv_ledger(cfg: DecoderConfig, context: int, batch: int = 1, dtype: str = "bf16",
              gqa_groups: int | None = None) -> KVLedger:
    """Return the :class:`KVLedger` of ``cfg`` for ``batch`` rows of ``context`` tokens in ``dtype``.

    Rows: MHA, GQA, MQA and MLA at equal d_model (see :func:`kind_config`), the model's own kind
    marked ``own`` (and a GQA row with ``gqa_groups`` beside a GQA model's own when they differ;
    no GQA comparison when ``n_head`` has no divisor to group by). Bad numbers raise LmlabError.
    """
    if dtype not in DTYPES:
        raise LmlabError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise LmlabError(f"--batch must be a positive number of sequences, got {batch!r}")
    check_context(cfg, context)
    own_kind = attention_kind(cfg)
    if gqa_groups is None:
        gqa_groups = cfg.n_kv_heads if own_kind == "gqa" else default_gqa_groups(cfg.n_head)
    rows = []
    for kind in KINDS:
        if kind == own_kind:
            rows.append(_row(cfg, True, batch, context, dtype))
        if kind == "gqa" and gqa_groups is None:
            continue
        if kind != own_kind or (kind == "gqa" and gqa_groups != cfg.n_kv_heads):
            rows.append(_row(kind_config(cfg, kind, gqa_groups), False, batch, context, dtype))
    return KVLedger(batch, context, dtype, tuple(rows))


def available_memory() -> int | None:
    """Return the bytes of memory available to a new allocation (Linux MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def measure_kv_bytes(cfg: DecoderConfig, batch: int, context: int, dtype: str = "bf16") -> int:
    """Build the model's real cache, ``Decoder(cfg).new_kv_cache(batch, context, dtype)`` on the CPU,
    and return the bytes it holds (its ``nbytes``). The model's weights stay on the meta device (no
    memory); the cache is allocated for real and freed on return."""
    from lmlab.models.decoder import Decoder

    with torch.device("meta"):
        model = Decoder(cfg)
    cache = model.new_kv_cache(batch, context, dtype=DTYPES[dtype], device="cpu")
    return int(cache.nbytes)


def measure_ledger(ledger: KVLedger, memory_limit: int | None = None) -> KVLedger:
    """Return ``ledger`` with every row's cache measured by :func:`measure_kv_bytes`, one kind at a time.

    Refuses (LmlabError) before allocating when the largest cache exceeds ``memory_limit`` bytes
    (default: 90% of the memory available now).
    """
    from lmlab.console import human_bytes

    if memory_limit is None:
        free = available_memory()
        memory_limit = None if free is None else int(0.9 * free)
    largest = max(ledger.rows, key=lambda r: r.bytes_total)
    if memory_limit is not None and largest.bytes_total > memory_limit:
        raise LmlabError(f"--measure would allocate {human_bytes(largest.bytes_total)} for the "
                         f"{largest.kind.upper()} cache, more than the {human_bytes(memory_limit)} this "
                         "machine can spare; lower --context or --batch, or drop --measure (the formula "
                         "needs no memory)")
    rows = tuple(dataclasses.replace(r, measured_bytes=measure_kv_bytes(r.config, r.batch, r.context,
                                                                        ledger.dtype))
                 for r in ledger.rows)
    return dataclasses.replace(ledger, rows=rows)
