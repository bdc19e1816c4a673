"""Helpers shared by the Hugging Face parity tests."""

from __future__ import annotations

import torch


def randomize(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Larger random weights than HF's init, so logits are O(1) and every part matters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()
