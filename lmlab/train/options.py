"""Options shared by every command that trains with the one Trainer (as litgpt's ``args.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.config import DictConfig, arg
from lmlab.errors import LmlabError


@dataclass
class OptimOptions(DictConfig):
    """AdamW and its learning-rate schedule: linear warmup, then cosine decay to ``min_lr``.

    Commands embed one of these (``optim: OptimOptions = arg(OptimOptions(lr=...))``); its
    fields are flags of their own names (``--lr``, ``--warmup-steps``, ...).
    """

    lr: float = arg(1e-3, "peak learning rate")
    min_lr: float = arg(1e-4, "final learning rate of the cosine decay")
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
