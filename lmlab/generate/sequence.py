"""One request's decoding behind a small interface, for any model that generates.

A :class:`SequenceLM` starts a :class:`Stepper` per prompt (``prefill()`` then one ``step(token)``
per new token, each returning ``(1, V)`` next-token logits) and scores a whole prompt at once
(``prompt_logits``). The server (:mod:`lmlab.serve.engine`) serves every family but the
Transformer decoders it batches in KV-cache slots through it; the token-id n-gram
(:mod:`lmlab.ngram.token_lm`) implements it too, which is why it is a duck-typed Protocol.

:func:`sequence_lm` adapts a torch model with the per-family strategies of
:func:`lmlab.generate.steps.steps_for` run on one prompt, so a request's logits are exactly those
of :func:`lmlab.generate.decode` on that prompt alone.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.generate.steps import context_limit, family, steps_for
from lmlab.nn.linear import use_gemv_layout


@runtime_checkable
class Stepper(Protocol):
    """One request's decode state."""

    def prefill(self) -> torch.Tensor:
        """Return the ``(1, V)`` logits for the token after the prompt."""
        ...

    def step(self, token: int) -> torch.Tensor:
        """Append ``token``; return the ``(1, V)`` logits for the next one."""
        ...


@runtime_checkable
class SequenceLM(Protocol):
    """A model served one request at a time. Logits may be log-probabilities (-inf for a token of
    probability 0, never NaN). Optionally ``check(prompt, max_tokens, prompt_logprobs)`` refuses
    (LmlabError) what the model cannot do before a request is queued."""

    vocab_size: int  # logits have this many columns
    block_size: int | None  # most tokens read at once (prompt + new ones); None: no limit
    device: torch.device  # where the logits live

    def start(self, prompt: list[int]) -> Stepper:
        """Return the decode state of one request on ``prompt``."""
        ...

    def prompt_logits(self, prompt: list[int]) -> torch.Tensor:
        """Return ``(len(prompt), V)`` logits: row i for the token after ``prompt[:i + 1]``."""
        ...


class _TorchStepper:
    """A :func:`steps_for` strategy on one prompt, fed one token id a step."""

    def __init__(self, steps, device: torch.device):
        self.steps, self.device, self.n = steps, device, 0

    def prefill(self) -> torch.Tensor:
        return self.steps.prefill()

    def step(self, token: int) -> torch.Tensor:
        logits = self.steps.step(torch.tensor([token], device=self.device), self.n)
        self.n += 1
        return logits


class TorchSequenceLM:
    """A torch model that generates (any :func:`~lmlab.generate.steps.family`) as a
    :class:`SequenceLM`. An encoder-decoder reads the prompt as its source and generates the
    target; it cannot score the prompt, and decodes at most ``block_size`` target tokens (its
    self-attention cache is allocated for that many)."""

    def __init__(self, model: nn.Module):
        self.kind = family(model)  # LmlabError for a model that cannot generate
        self.model = model.eval()
        use_gemv_layout(model)  # as lmlab.generate.decode lays out an inference model
        self.vocab_size = model.config.vocab_size
        self.block_size = None if self.kind == "encdec" else context_limit(model)
        self.device = next(model.parameters()).device

    def check(self, prompt: list[int], max_tokens: int, prompt_logprobs: bool) -> None:
        """Refuse what the model cannot do (LmlabError): an encoder-decoder scoring its prompt (its
        source is not text it predicts), a source or a target beyond its positions."""
        if self.kind != "encdec":
            return
        if prompt_logprobs:
            raise LmlabError("an encoder-decoder reads the prompt as its source and does not predict it, so "
                             "it has no prompt logprobs; leave echo (with logprobs) unset")
        cap = self.model.config.block_size
        if self.model.config.max_positions is not None and len(prompt) > cap:
            raise LmlabError(f"the source has {len(prompt)} tokens but the model has {cap} source positions "
                             f"(block_size); shorten the prompt to at most {cap} tokens")
        if max_tokens > cap:
            raise LmlabError(f"max_tokens ({max_tokens}) exceeds the {cap} target tokens this "
                             f"encoder-decoder decodes (block_size); lower max_tokens to at most {cap}")

    def start(self, prompt: list[int]) -> _TorchStepper:
        """Return the decode state of ``prompt`` (an encoder-decoder: the encoded source)."""
        # the new-token count sizes a KV cache: a decoder's fills its context, an encoder-decoder's
        # target takes at most block_size; Infini-attention and the recurrent, window and ELMo
        # strategies do not use it
        if self.kind == "encdec":
            room = self.model.config.block_size
        else:
            room = 1 if self.block_size is None else max(1, self.block_size - len(prompt))
        return _TorchStepper(steps_for(self.model, [list(prompt)], room, True, self.device), self.device)

    def prompt_logits(self, prompt: list[int]) -> torch.Tensor:
        """Return ``(len(prompt), V)`` logits of one full forward over ``prompt``."""
        ids = torch.tensor([list(prompt)], device=self.device)
        if self.kind == "encdec":
            raise LmlabError("an encoder-decoder does not predict its source, so it has no prompt logits")
        if self.kind == "elmo":
            return self.model.forward_lm(ids)[0][0]
        return self.model(ids)[0]


def sequence_lm(model: nn.Module) -> TorchSequenceLM:
    """Return ``model`` as a :class:`SequenceLM` (LmlabError naming the problem for a model that cannot
    generate, such as a BERT encoder)."""
    return TorchSequenceLM(model)
