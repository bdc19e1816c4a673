"""A fingerprint of a base model's weights, so an adapter is never loaded onto another base."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from lmlab.tuning.module import tuning_modules

SAMPLES = 64  # values read per tensor: enough to tell two trainings apart, cheap for any size


def base_fingerprint(model: nn.Module, skip: tuple[str, ...] = ()) -> str:
    """Return a hex digest of ``model``'s base weights: each tensor's name and shape, and
    :data:`SAMPLES` evenly spaced values rounded to bfloat16 (so the same base in fp32, bf16 or
    on another device gives the same digest). Tuning modules and names starting with ``skip``
    (kept-trainable parts such as a fresh classifier head) are left out."""
    tuned = tuple(n + "." for n, _ in tuning_modules(model))
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if (tuned and name.startswith(tuned)) or (skip and name.startswith(skip)):
            continue
        flat = t.detach().reshape(-1)
        h.update(f"{name}:{tuple(t.shape)};".encode())
        if flat.numel():
            idx = torch.linspace(0, flat.numel() - 1, min(SAMPLES, flat.numel()), device=flat.device).long()
            sample = flat[idx].to("cpu", torch.float32).to(torch.bfloat16)
            h.update(sample.view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:16]
