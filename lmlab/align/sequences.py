"""Prompt + response sequences as one right-padded batch, and the log-probability a causal model
gives each response token: the quantity every preference method (reward-KL penalties, PPO's
ratio, DPO's implicit reward, AI feedback's choice) is built from.

A row is ``prompt + response`` from position 0, padded on the right with ``pad_id``; position
``t`` of the targets is token ``t + 1``. ``response_mask[b, t]`` is True where target ``t`` is a
response token of row ``b``: padding and prompt tokens never count. Right padding needs no
position ids and no attention mask in a causal model, since padding comes after every real token.
Masked places are filled with :func:`torch.where`, never by multiplying, so a NaN or inf at a
padded place cannot leak into a sum (NaN * 0 = NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import LmlabError


@dataclass
class Joined:
    """A batch of ``prompt + response`` rows: ``input_ids (B, T)`` right-padded, ``response_mask
    (B, T - 1)`` (True where target ``t``, token ``t + 1``, is a response token), and the lengths."""

    input_ids: torch.Tensor
    response_mask: torch.Tensor
    prompt_lens: list[int]
    response_lens: list[int]

    @property
    def targets(self) -> torch.Tensor:
        """The next token of each position ``(B, T - 1)``."""
        return self.input_ids[:, 1:]


def join(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int,
         device: torch.device | str = "cpu") -> Joined:
    """Return the right-padded batch of ``prompt + response`` rows (see :class:`Joined`).

    Raises LmlabError when the lists differ in length or a prompt is empty (nothing would predict
    the response's first token).
    """
    if len(prompts) != len(responses):
        raise LmlabError(f"{len(prompts)} prompts but {len(responses)} responses; give one response "
                         "per prompt")
    if not prompts:
        raise LmlabError("no sequences to score")
    if any(len(p) == 0 for p in prompts):
        raise LmlabError("a prompt is empty; start it with at least one token (e.g. the end-of-text token)")
    rows = [list(map(int, p)) + list(map(int, r)) for p, r in zip(prompts, responses)]
    longest = max(max(len(r) for r in rows), 2)
    ids = torch.full((len(rows), longest), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), longest - 1), dtype=torch.bool)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        ids[b, :len(rows[b])] = torch.tensor(rows[b], dtype=torch.long)
        mask[b, len(p) - 1:len(p) - 1 + len(r)] = True
    return Joined(ids.to(device), mask.to(device), [len(p) for p in prompts], [len(r) for r in responses])


def logits_of(model: nn.Module, joined: Joined, temperature: float = 1.0) -> torch.Tensor:
    """Return the next-token logits ``(B, T - 1, V)`` of ``model`` on ``joined``, divided by
    ``temperature`` (the rollout's, so that training scores the distribution that sampled)."""
    if temperature <= 0:
        raise LmlabError(f"temperature={temperature} must be > 0 to score sampled tokens")
    logits = model(joined.input_ids[:, :-1])
    return logits / temperature if temperature != 1.0 else logits


def gather_logprobs(logits: torch.Tensor, joined: Joined) -> torch.Tensor:
    """Return ``(B, T - 1)`` log-probabilities of each target token under ``logits (B, T - 1, V)``
    (in fp32), 0 where ``response_mask`` is False."""
    b, t, v = logits.shape
    # flat (B*T, V) rows: over a transposed (B, V, T) view the same loss is 5-10x slower on CPU
    logp = -F.cross_entropy(logits.float().reshape(b * t, v), joined.targets.reshape(b * t),
                            reduction="none").view(b, t)
    return torch.where(joined.response_mask, logp, torch.zeros_like(logp))


def token_logprobs(model: nn.Module, joined: Joined, temperature: float = 1.0) -> torch.Tensor:
    """Return ``(B, T - 1)`` log-probabilities of the response tokens under ``model`` (0 elsewhere).

    A model with ``target_logprobs`` (lmlab's decoders) runs its output layer on the response
    positions only, fused with the softmax; any other gives full logits to :func:`gather_logprobs`.
    """
    fast = getattr(model, "target_logprobs", None)
    if fast is None:
        return gather_logprobs(logits_of(model, joined, temperature), joined)
    if temperature <= 0:
        raise LmlabError(f"temperature={temperature} must be > 0 to score sampled tokens")
    return fast(joined.input_ids[:, :-1], joined.targets, joined.response_mask, temperature)


def sequence_logprobs(model: nn.Module, joined: Joined, temperature: float = 1.0,
                      average: bool = False) -> torch.Tensor:
    """Return ``(B,)``: the sum of each response's token log-probabilities under ``model``, or with
    ``average`` their mean (an empty response scores 0)."""
    total = token_logprobs(model, joined, temperature).sum(-1)
    if not average:
        return total
    n = joined.response_mask.sum(-1)
    return torch.where(n > 0, total / n.clamp(min=1), torch.zeros_like(total))


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Return the mean of ``values`` where ``mask`` is True (over ``dim``, or all); 0 where nothing
    is masked in. Masked-out places may hold NaN or inf."""
    v = torch.where(mask, values, torch.zeros_like(values))
    if dim is None:
        return v.sum() / mask.sum().clamp(min=1)
    return v.sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Return ``values`` whitened over the places ``mask`` marks (mean 0 unless ``shift_mean`` is
    False, unbiased variance 1, as TRL's ``masked_whiten``), 0 elsewhere."""
    mean = masked_mean(values, mask)
    centred = torch.where(mask, values - mean, torch.zeros_like(values))
    n = mask.sum().clamp(min=2)
    var = (centred ** 2).sum() / (n - 1)
    out = centred * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return torch.where(mask, out, torch.zeros_like(values))


def no_dropout(model: nn.Module) -> int:
    """Turn every dropout of ``model`` off for good (``nn.Dropout`` modules' ``p`` and the attention
    modules' ``dropout`` rate set to 0), whatever its train/eval mode; return how many were on.

    RLHF and DPO compare log-probabilities of the same tokens from forwards taken at different
    times (rollout and update, policy and reference): a dropout mask would make them differ
    (PPO's ratio would not start at 1), and unlike ``eval()`` this survives the trainer putting
    the model in training mode.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            changed += module.p > 0
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):
            changed += module.dropout > 0
            module.dropout = 0.0
    return changed
