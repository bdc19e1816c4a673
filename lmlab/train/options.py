"""Options shared by every command that trains with the one Trainer (as litgpt's ``args.py``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from lmlab.config import DictConfig, arg
from lmlab.errors import LmlabError


@dataclass
class OptimOptions(DictConfig):
    """AdamW and its learning-rate schedule (by default linear warmup, then cosine decay to
    ``min_lr``), with ULMFiT's slanted triangular schedule and discriminative learning rates.

    Commands embed one of these (``optim: OptimOptions = arg(OptimOptions(lr=...))``); its
    fields are flags of their own names (``--lr``, ``--warmup-steps``, ...).
    """

    lr: float = arg(1e-3, "peak learning rate")
    min_lr: float = arg(1e-4, "final learning rate of the cosine and linear decays")
    schedule: Literal["cosine", "stlr", "linear", "constant"] = arg(
        "cosine", "learning-rate schedule after the warmup: cosine or linear decay to --min-lr, constant, "
        "or stlr (ULMFiT's slanted triangular: a linear rise from lr/ratio to lr over --stlr-cut-frac of "
        "the run, then a linear fall back to lr/ratio; it is its own warmup, so --warmup-steps, "
        "--warmup-fraction and --min-lr do not apply)")
    stlr_cut_frac: float = arg(0.1, "stlr: fraction of the run spent rising (ULMFiT: 0.1)")
    stlr_ratio: float = arg(32.0, "stlr: how much smaller the lowest rate is than the peak (ULMFiT: 32)")
    discriminative_lr: float = arg(
        0.0, "discriminative learning rates: each layer group (embeddings, each block, head) trains at "
        "the rate of the group above divided by this, the top group at --lr (ULMFiT: 2.6; 0 or 1: off)")
    warmup_steps: int = arg(100, "linear warmup steps")
    warmup_fraction: float = arg(0.0, "warm up over this fraction of the run's steps instead "
                                      "(at least one step; 0: use --warmup-steps)")
    weight_decay: float = arg(0.1, "AdamW weight decay (not applied to norms, biases, embeddings)")
    beta1: float = arg(0.9, "AdamW beta1")
    beta2: float = arg(0.95, "AdamW beta2")
    grad_clip: float = arg(1.0, "clip the global gradient norm to this (0: off)")

    def check(self) -> None:
        """Raise LmlabError naming the flag and a fix when a value is out of range."""
        if not self.lr > 0 or not self.min_lr >= 0:
            raise LmlabError(f"--lr must be positive and --min-lr not negative (got {self.lr}, "
                             f"{self.min_lr}); e.g. --lr 1e-3 --min-lr 1e-4")
        if self.warmup_steps < 0 or not 0.0 <= self.warmup_fraction < 1.0:
            raise LmlabError(f"--warmup-steps must be >= 0 and --warmup-fraction in [0, 1) (got "
                             f"{self.warmup_steps}, {self.warmup_fraction})")
        if not self.weight_decay >= 0 or not self.grad_clip >= 0:
            raise LmlabError(f"--weight-decay and --grad-clip must not be negative (got {self.weight_decay}, "
                             f"{self.grad_clip}); 0 turns either off")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise LmlabError(f"--beta1 and --beta2 must be in [0, 1) (got {self.beta1}, {self.beta2})")
        if not 0.0 < self.stlr_cut_frac < 1.0 or not self.stlr_ratio >= 1.0:
            raise LmlabError(f"--stlr-cut-frac must be in (0, 1) and --stlr-ratio at least 1 (got "
                             f"{self.stlr_cut_frac}, {self.stlr_ratio}); ULMFiT uses 0.1 and 32")
        if not (self.discriminative_lr == 0.0 or self.discriminative_lr >= 1.0):
            raise LmlabError(f"--discriminative-lr must be 0 (off) or a factor of at least 1 (got "
                             f"{self.discriminative_lr}); ULMFiT uses 2.6")

    def group_lr_factor(self) -> float:
        """Return the discriminative factor between adjacent layer groups (1.0 when off)."""
        return self.discriminative_lr if self.discriminative_lr > 1.0 else 1.0


@dataclass
class LoopOptions(DictConfig):
    """How long a run trains and how it keeps its books: the Trainer's own options.

    :class:`~lmlab.train.loop.TrainSettings` and the configs of commands that train
    (``lmlab pretrain``) derive from this class, so the fields are declared once.
    """

    max_steps: int | None = arg(None, "stop after this many optimizer steps")
    max_tokens: int | None = arg(None, "stop after this many training tokens")
    time_budget: float | None = arg(
        None, "stop after this many seconds of training; the lr schedule runs on elapsed time (Cramming)"
    )
    stop_at_step: int | None = arg(
        None, "end this session at this step with a resumable checkpoint, without shortening the schedule"
    )
    gradual_unfreeze: int = arg(
        0, "gradual unfreezing (ULMFiT): train only the top layer group at first and unfreeze one more "
        "group, going down, every this many steps (0: off)")
    grad_accum: int = arg(1, "micro-batches per optimizer step (global batch = processes x batch x this)")
    eval_interval: int = arg(0, "validate every N steps (0: only at the end)")
    eval_interval_s: float = arg(0.0, "also validate every this many seconds of training (0: off)")
    log_interval: int = arg(10, "log to metrics.jsonl every N steps")
    save_interval: int = arg(0, "checkpoint every N steps (0: only at the end and on Ctrl-C)")
    compile: bool = arg(False, "torch.compile the model")
    deterministic: bool = arg(
        False, "bitwise-reproducible losses on this machine: fp32 unless --precision says otherwise, "
        "deterministic kernels, and a resume keeps the run's thread count and matmul route"
    )

    def loop_options(self) -> dict[str, Any]:
        """Return this config's :class:`LoopOptions` fields as keyword arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(LoopOptions)}
