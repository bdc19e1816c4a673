"""What trains each model family: its objective and its batch source.

``causal`` is next-token prediction (decoders, the NPLM; truncated BPTT for recurrent LMs,
the joint forward + backward loss for ELMo); the other objectives pair a batch builder of
:mod:`lmlab.data.collators` with a loss of :mod:`lmlab.train.objectives`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmlab.data.collators import ObjectiveBatches, build_examples
from lmlab.data.windows import RandomWindows
from lmlab.errors import LmlabError
from lmlab.models.elmo import ELMo, bilm_loss
from lmlab.models.registry import family_of
from lmlab.models.rnn import RNNLM
from lmlab.train import objectives
from lmlab.train.bptt import TruncatedBPTT

OBJECTIVE_NAMES = ("causal", "mlm", "mlm+nsp", "span-corruption", "denoise", "blank-infilling")
# The objectives each family can train with; the first is its natural one (--objective auto).
FITS: dict[str, tuple[str, ...]] = {
    "decoder": ("causal", "blank-infilling"),
}


def fitting_objectives(model: nn.Module) -> tuple[str, ...]:
    """Return the objectives ``model`` can be trained with, its natural one first."""
    return FITS.get(family_of(model).arch, ("causal",))


def resolve_objective(model: nn.Module, name: str = "auto") -> str:
    """Return the objective ``name`` stands for (``auto``: the model's natural one).

    Raises LmlabError, naming the objectives that fit, when ``model`` cannot train with it.
    """
    fits = fitting_objectives(model)
    if name == "auto":
        return fits[0]
    if name not in OBJECTIVE_NAMES:
        raise LmlabError(f"unknown objective {name!r}; choose one of auto, {', '.join(OBJECTIVE_NAMES)}")
    if name not in fits:
        arch = family_of(model).arch
        raise LmlabError(f"the {name} objective does not fit a {arch} model; objectives that fit it: "
                         f"{', '.join(fits)} (or pick a model preset of another family)")
    return name


def training_parts(model: nn.Module, tokens: Any, *, block_size: int, batch_size: int, seed: int,
                   rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                   objective: str = "auto", tokenizer: Any = None,
                   masking: str = "dynamic") -> tuple[Any, Any]:
    """Return ``(objective, batch source)`` that trains ``model`` on the token array ``tokens``.

    ``objective`` (default: the model's natural one, see :func:`resolve_objective`) other than
    ``causal`` needs ``tokenizer`` (an lmlab Tokenizer) for its special tokens; its batch source
    is an :class:`~lmlab.data.collators.ObjectiveBatches` (``.builder`` makes validation batches
    the same way) with ``masking`` dynamic or static. For ``causal``: recurrent LMs get truncated
    BPTT (contiguous streams, carried state); ELMo gets random windows and the joint forward +
    backward loss; the NPLM and decoders get random windows and the next-token loss.
    """
    name = resolve_objective(model, objective)
    if name != "causal":
        if tokenizer is None:
            raise LmlabError(f"the {name} objective needs the data's tokenizer for its special tokens")
        builder = build_examples(name, tokenizer, block_size)
        batches = ObjectiveBatches(tokens, builder, name, batch_size=batch_size, seed=seed, masking=masking,
                                   rank=rank, world_size=world_size, device=device)
        return OBJECTIVES[name], batches
    if isinstance(model, RNNLM):
        bptt = TruncatedBPTT(tokens, block_size=block_size, batch_size=batch_size, rank=rank,
                             world_size=world_size, device=device)
        return bptt.objective, bptt
    batches = RandomWindows(tokens, block_size=block_size, batch_size=batch_size, seed=seed, rank=rank,
                            world_size=world_size, device=device)
    return (bilm_loss if isinstance(model, ELMo) else objectives.causal_lm_loss), batches


OBJECTIVES: dict[str, objectives.Objective] = {
    "blank-infilling": objectives.blank_infilling_loss,
}
