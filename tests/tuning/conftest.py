"""Tiny models for the tuning tests, and a helper that gives a method's parameters non-zero values
(a LoRA with B = 0 equals its base, so equivalence checks would pass trivially)."""

from __future__ import annotations

import pytest
import torch

from lmlab.models import Decoder, DecoderConfig

LLAMA = dict(vocab_size=61, block_size=32, n_layer=2, n_head=4, n_kv_heads=2, d_model=32, norm="rmsnorm",
             mlp="swiglu", pos="rope", bias=False, tie_embeddings=False)
GPT2 = dict(vocab_size=61, block_size=32, n_layer=2, n_head=4, d_model=32)


def tiny(kind: str = "llama", seed: int = 0, **kw) -> Decoder:
    """A tiny decoder (LLaMA- or GPT-2-shaped) in eval mode."""
    torch.manual_seed(seed)
    return Decoder(DecoderConfig(**{**(LLAMA if kind == "llama" else GPT2), **kw})).eval()


def perturb(model: torch.nn.Module, std: float = 0.1, seed: int = 1) -> None:
    """Add noise to every trainable parameter (the method's), so it changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * std)


def batch(vocab: int = 61, B: int = 2, T: int = 12, seed: int = 2) -> torch.Tensor:
    """Token ids ``(B, T)``."""
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def train_steps(model: torch.nn.Module, x: torch.Tensor, steps: int = 3) -> None:
    """A few AdamW steps on the next-token loss of ``x``, over the trainable parameters."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        model(x[:, :-1], targets=x[:, 1:]).backward()
        opt.step()
    model.eval()


def assert_only_method_learns(model: torch.nn.Module, x: torch.Tensor, method_names: set[str]) -> None:
    """Train a few steps; check that exactly the parameters named ``method_names`` got gradients and
    changed, and every other parameter kept its value."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = None
    train_steps(model, x)
    got_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert got_grad == method_names
    assert changed == method_names


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
