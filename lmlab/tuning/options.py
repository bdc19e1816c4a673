"""What a parameter-efficient fine-tuning run asks for (:class:`TuningOptions`) and what it got
(:class:`TuningInfo`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmlab.config import DictConfig, arg
from lmlab.errors import LmlabError

METHODS = ("lora", "houlsby", "pfeiffer", "prefix", "prompt")
# LoRA's default targets: the query and value projections, as Hu et al. (2021) and PEFT's LLaMA default
DEFAULT_LORA_TARGETS = ["q", "v"]


@dataclass
class TuningOptions(DictConfig):
    """The method and its shape. ``targets`` are module-name patterns (LoRA) matched like PEFT's
    ``target_modules``: a pattern matches a module whose name equals it, ends with ``.PATTERN``,
    or matches it as a whole regular expression. Besides every linear layer's own name, the
    slices of fused layers have names of their own: ``attn.q``/``attn.k``/``attn.v`` (of
    ``attn.qkv``; cross-attention's ``k``/``v`` of ``kv``) and ``mlp.w1``/``mlp.w3`` (gate and
    up of SwiGLU's ``w13``), so PEFT's ``q_proj``... ``up_proj`` map one to one."""

    method: str = arg("lora", "tuning method: lora | houlsby | pfeiffer | prefix | prompt")
    r: int = arg(8, "LoRA rank")
    alpha: float = arg(16.0, "LoRA alpha: the update is scaled by alpha / r (rsLoRA: alpha / sqrt(r))")
    dropout: float = arg(0.0, "dropout on the LoRA input")
    rslora: bool = arg(False, "rank-stabilised LoRA scaling alpha / sqrt(r) (Kalajdzievski 2023)")
    targets: list[str] = arg(list(DEFAULT_LORA_TARGETS), "LoRA target module patterns (see TuningOptions)")
    bottleneck: int = arg(16, "adapter bottleneck width (Houlsby / Pfeiffer)")
    adapter_act: str = arg("relu", "adapter non-linearity: relu | gelu | silu")
    n_prefix: int = arg(10, "prefix tuning: key/value positions prepended in every layer")
    prefix_hidden: int = arg(256, "prefix tuning: width of the reparameterising MLP (0: train the "
                                  "prefixes directly)")
    n_prompt: int = arg(10, "prompt tuning: virtual tokens prepended to every input")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise LmlabError(f"tuning method {self.method!r} is not one of {', '.join(METHODS)}")
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        for name in ("r", "bottleneck", "n_prefix", "n_prompt"):
            if int(getattr(self, name)) < 1:
                raise LmlabError(f"tuning {name} must be a positive integer, got {getattr(self, name)}")
        if self.prefix_hidden < 0:
            raise LmlabError(f"prefix_hidden must be 0 (no MLP) or positive, got {self.prefix_hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise LmlabError(f"LoRA dropout={self.dropout} must be in [0, 1)")
        if self.adapter_act not in ("relu", "gelu", "silu"):
            raise LmlabError(f"adapter_act={self.adapter_act!r} is not one of relu, gelu, silu")
        if self.method == "lora" and not self.targets:
            raise LmlabError("LoRA needs at least one target pattern; e.g. targets=[q, v]")

    @property
    def lora_scale(self) -> float:
        """LoRA's output scale: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
        return self.alpha / (self.r ** 0.5 if self.rslora else self.r)


@dataclass
class TuningInfo:
    """What :func:`lmlab.tuning.apply_tuning` did: the method, the modules it wrapped, and the
    trainable parameters (the method's and the kept ones) against all of them."""

    method: str
    trainable: int
    total: int
    modules: list[str] = field(default_factory=list)

    @property
    def share(self) -> float:
        """Trainable parameters as a fraction of all parameters."""
        return self.trainable / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the info as a JSON-friendly dict (with ``share``)."""
        return {"method": self.method, "trainable": self.trainable, "total": self.total,
                "share": self.share, "modules": list(self.modules)}
