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
from lmlab.data.special import find_special_ids
from lmlab.data.windows import RandomWindows
from lmlab.errors import LmlabError
from lmlab.models.elmo import ELMo, bilm_loss
from lmlab.models.registry import family_of
from lmlab.models.rnn import RNNLM
from lmlab.train import objectives
from lmlab.train.bptt import TruncatedBPTT

OBJECTIVE_NAMES = ("causal", "mlm", "mlm+nsp", "span-corruption", "denoise", "blank-infilling")
# The objectives each family can train with (others: causal only).
FITS: dict[str, tuple[str, ...]] = {
    "decoder": ("causal", "blank-infilling"),
    "encoder": ("mlm", "mlm+nsp"),
    "encdec": ("span-corruption", "denoise"),
}


def fitting_objectives(model: nn.Module) -> tuple[str, ...]:
    """Return the objectives ``model`` can be trained with, its natural one first: the one its
    config names (``objective``: BERT mlm+nsp, RoBERTa mlm, T5 span-corruption, BART denoise),
    else the family's first. An encoder without a next-sentence head cannot train mlm+nsp."""
    config = getattr(model, "config", None)
    fits = FITS.get(family_of(model).arch, ("causal",))
    if "mlm+nsp" in fits and not getattr(config, "nsp", False):
        fits = tuple(f for f in fits if f != "mlm+nsp")
    natural = getattr(config, "objective", None)
    return (natural, *(f for f in fits if f != natural)) if natural in fits else fits


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
        article = "an" if arch[0] in "aeiou" else "a"
        raise LmlabError(f"the {name} objective does not fit {article} {arch} model; objectives that fit it: "
                         f"{', '.join(fits)} (or pick a model preset of another family)")
    return name


def with_tokenizer_ids(config: Any, tokenizer: Any) -> Any:
    """Return ``config`` with ``tokenizer``'s special ids where its family stores them: an
    encoder-decoder's pad, eos, bos and decoder start ids (the family's convention for the start
    kept), a RoBERTa-style encoder's pad id (its positions skip padding); other configs, and
    ids the tokenizer does not have, unchanged."""
    arch = family_of(config).arch
    ids = find_special_ids(tokenizer)
    if arch == "encdec" and ids.pad is not None and ids.eos is not None:
        from lmlab.models.encdec import with_special_ids

        return with_special_ids(config, ids.pad, ids.eos, ids.bos)
    if arch == "encoder" and config.pad_id is not None and ids.pad is not None:
        return type(config).from_dict({**config.to_dict(), "pad_id": ids.pad})
    return config


def training_parts(model: nn.Module, tokens: Any, *, block_size: int, batch_size: int, seed: int,
                   rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                   objective: str = "auto", tokenizer: Any = None,
                   masking: str = "dynamic", example_len: int | None = None,
                   loss_mask: Any = None) -> tuple[Any, Any]:
    """Return ``(objective, batch source)`` that trains ``model`` on the token array ``tokens``.

    ``objective`` (default: the model's natural one, see :func:`resolve_objective`) other than
    ``causal`` needs ``tokenizer`` (an lmlab Tokenizer) for its special tokens; its batch source
    is an :class:`~lmlab.data.collators.ObjectiveBatches` (``.builder`` makes validation batches
    the same way) with ``masking`` dynamic or static. For ``causal``: recurrent LMs get truncated
    BPTT (contiguous streams, carried state); ELMo gets random windows and the joint forward +
    backward loss; the NPLM and decoders get random windows and the next-token loss.
    ``example_len`` and ``loss_mask`` (example data such as passkey retrieval, see
    :mod:`lmlab.data.prepare`) make each window one whole example, scored where the mask is 1.
    """
    name = resolve_objective(model, objective)
    if example_len is not None and (name != "causal" or isinstance(model, (RNNLM, ELMo))):
        raise LmlabError(f"example data (one example per window, e.g. passkey retrieval) trains Transformer "
                         f"decoders and the NPLM with the causal objective, not the {name} objective of "
                         f"a {type(model).__name__}")
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
                            world_size=world_size, device=device, example_len=example_len,
                            loss_mask=loss_mask)
    return (bilm_loss if isinstance(model, ELMo) else objectives.causal_lm_loss), batches


OBJECTIVES: dict[str, objectives.Objective] = {
    "mlm": objectives.mlm_loss,
    "mlm+nsp": objectives.mlm_nsp_loss,
    "span-corruption": objectives.seq2seq_loss,
    "denoise": objectives.seq2seq_loss,
    "blank-infilling": objectives.blank_infilling_loss,
}
