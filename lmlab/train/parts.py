"""What trains each model family: its objective and its batch source."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmlab.data.windows import RandomWindows
from lmlab.models.elmo import ELMo, bilm_loss
from lmlab.models.rnn import RNNLM
from lmlab.train import objectives
from lmlab.train.bptt import TruncatedBPTT


def training_parts(model: nn.Module, tokens: Any, *, block_size: int, batch_size: int, seed: int,
                   rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu") -> tuple[Any, Any]:
    """Return ``(objective, batch source)`` that trains ``model`` on the token array ``tokens``.

    Recurrent LMs get truncated BPTT (contiguous streams, carried state); ELMo gets
    random windows and the joint forward + backward loss; the NPLM and decoders get
    random windows and the next-token loss.
    """
    if isinstance(model, RNNLM):
        bptt = TruncatedBPTT(tokens, block_size=block_size, batch_size=batch_size, rank=rank,
                             world_size=world_size, device=device)
        return bptt.objective, bptt
    batches = RandomWindows(tokens, block_size=block_size, batch_size=batch_size, seed=seed, rank=rank,
                            world_size=world_size, device=device)
    return (bilm_loss if isinstance(model, ELMo) else objectives.causal_lm_loss), batches
