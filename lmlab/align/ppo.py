"""The arithmetic of PPO-RLHF (Ziegler et al. 2019; Ouyang et al. 2022) and of GRPO (Shao et al.
2024), as plain functions over ``(B, T - 1)`` tensors aligned with a :class:`~lmlab.align.sequences.
Joined` batch: place ``t`` belongs to target token ``t + 1`` and counts only where ``mask`` (the
response mask) is True. Every masked-out place is filled with :func:`torch.where`, never by
multiplying, so a NaN or inf there cannot leak (NaN * 0 = NaN).

- KL to the reference: a fixed ``beta`` or Ziegler's adaptive controller (target 6 nats,
  horizon 10000 samples), which moves ``beta`` by at most 20% of ``n / horizon`` per update.
- Rewards per token: ``-beta * (log pi - log pi_ref)`` on each response token, plus the
  reward model's score on the last real response token (the stop token when there is one);
  a response that ran out of tokens before its stop token loses ``missing_stop_penalty``.
- GAE with ``gamma`` (1) and ``lambda`` (0.95) along each response (the value after the last
  response token is 0: the episode ends there), whitened advantages, PPO's clipped policy
  loss and clipped value loss, the policy's entropy, approx KL and clip fraction.
- GRPO: group-relative advantages ``(r - mean) / std`` over the samples of one prompt, and the
  unbiased non-negative KL estimate ``exp(d) - d - 1`` (``d = log pi_ref - log pi``) as a loss term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lmlab.align.sequences import masked_mean
from lmlab.errors import LmlabError

ZIEGLER_TARGET = 6.0
ZIEGLER_HORIZON = 10000


@dataclass
class KLController:
    """The KL coefficient ``beta``: fixed (``target`` None) or adaptive (Ziegler et al. 2019, sec.
    2.2): ``update(kl, n)`` multiplies ``beta`` by ``1 + clip(kl / target - 1, -0.2, 0.2) * n /
    horizon`` after ``n`` samples whose mean KL was ``kl``."""

    beta: float
    target: float | None = None
    horizon: int = ZIEGLER_HORIZON

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise LmlabError(f"--beta {self.beta} must be > 0 (the KL penalty's starting coefficient); "
                             "e.g. --beta 0.05")
        if self.target is not None and not self.target > 0:
            raise LmlabError(f"--target-kl {self.target} must be > 0 nats (Ziegler et al.: 6), or unset for "
                             "a fixed --beta")
        if self.horizon < 1:
            raise LmlabError(f"--kl-horizon {self.horizon} must be at least 1 (Ziegler et al.: 10000)")

    def update(self, kl: float, n: int) -> float:
        """Adjust ``beta`` after ``n`` samples of mean KL ``kl`` (a fixed controller keeps it);
        return the new ``beta``."""
        if self.target is not None:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.beta *= 1.0 + error * n / self.horizon
        return self.beta

    def state_dict(self) -> dict[str, float]:
        """Return what a resumed run needs: the current ``beta``."""
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore ``beta`` from :meth:`state_dict`."""
        self.beta = float(state["beta"])


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Return ``(B,)``: the last place ``mask (B, N)`` is True in each row (-1 where none is)."""
    places = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask, places, torch.full_like(places, -1)).amax(-1)


def penalise_missing_stop(scores: torch.Tensor, ended: torch.Tensor, penalty: float) -> torch.Tensor:
    """Return ``scores (B,)`` less ``penalty`` where ``ended (B,)`` is False (the response reached
    the token limit before its stop token)."""
    return torch.where(ended, scores, scores - penalty)


def token_rewards(logp: torch.Tensor, ref_logp: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
                  beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(rewards, kl)``, both ``(B, N)`` and 0 off the mask: the per-token KL ``log pi -
    log pi_ref`` and the reward ``-beta * kl`` plus ``scores (B,)`` on each row's last response token."""
    zero = torch.zeros_like(logp)
    kl = torch.where(mask, logp - ref_logp, zero)
    rewards = -beta * kl
    last = last_index(mask)
    at_last = torch.arange(mask.shape[-1], device=mask.device)[None, :] == last[:, None]
    rewards = torch.where(at_last & mask, rewards + scores[:, None].to(rewards.dtype), rewards)
    return torch.where(mask, rewards, zero), kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(advantages, returns)`` ``(B, N)`` by generalised advantage estimation along each
    row's response (a contiguous run of True in ``mask``); the value after the last response token
    is 0 (the episode ends). Returns are ``advantages + values``; both are 0 off the mask."""
    zero = torch.zeros_like(rewards[:, 0])
    next_value, next_adv = zero, zero
    out = []
    for t in range(rewards.shape[-1] - 1, -1, -1):
        m = mask[:, t]
        v = torch.where(m, values[:, t], zero)
        delta = torch.where(m, rewards[:, t], zero) + gamma * next_value - v
        adv = torch.where(m, delta + gamma * lam * next_adv, zero)
        out.append(adv)
        next_value, next_adv = v, adv  # 0 before the response: the recursion restarts per row
    advantages = torch.stack(out[::-1], dim=-1)
    returns = torch.where(mask, advantages + values, torch.zeros_like(values))
    return advantages, returns


@dataclass
class PolicyLoss:
    """PPO's clipped surrogate loss and what to watch: the fraction of clipped tokens, the approx
    KL between the sampling policy and the current one, and the ratio's mean and largest
    distance from 1 (exactly 0 on the first minibatch of a batch)."""

    loss: torch.Tensor
    clipfrac: torch.Tensor
    approx_kl: torch.Tensor
    ratio: torch.Tensor
    ratio_dev: torch.Tensor


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float = 0.2) -> PolicyLoss:
    """Return PPO's clipped policy loss ``mean max(-A r, -A clip(r, 1 - clip, 1 + clip))`` over the
    masked tokens, ``r = exp(logp - old_logp)``; approx KL is ``mean (logp - old_logp)^2 / 2``."""
    zero = torch.zeros_like(logp)
    log_ratio = torch.where(mask, logp - old_logp, zero)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(0.5 * log_ratio ** 2, mask)
        ratio_mean = masked_mean(ratio, mask)
        ratio_dev = torch.where(mask, (ratio - 1).abs(), zero).amax() if mask.any() else zero.sum()
    return PolicyLoss(loss, clipfrac, approx_kl, ratio_mean, ratio_dev)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(loss, clipfrac)``: PPO's clipped value loss ``0.5 mean max((v - R)^2, (v_clip -
    R)^2)``, ``v_clip = v_old + clip(v - v_old, -clip, clip)``, and the share of tokens where the
    clipped term is the larger."""
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)
    a, b = (values - returns) ** 2, (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(a, b), mask)
    with torch.no_grad():
        clipfrac = masked_mean((b > a).float(), mask)
    return loss, clipfrac


def entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return the mean entropy (nats) of the next-token distributions ``logits (B, N, V)`` over the
    masked places."""
    logp = logits.float().log_softmax(-1)
    h = -(logp.exp() * logp).sum(-1)
    return masked_mean(h, mask)


def group_advantages(scores: torch.Tensor, group: int, eps: float = 1e-6) -> torch.Tensor:
    """Return GRPO's advantages ``(B,)``: each score less its group's mean, over the group's standard
    deviation (0 for a group whose scores are all equal). Rows ``[k*group, (k+1)*group)`` are the
    samples of one prompt."""
    if group < 2 or scores.numel() % group:
        raise LmlabError(f"GRPO needs groups of at least 2 samples that divide the batch; got "
                         f"{scores.numel()} samples in groups of {group}")
    g = scores.float().view(-1, group)
    std = g.std(-1, keepdim=True)
    adv = torch.where(std > eps, (g - g.mean(-1, keepdim=True)) / std.clamp(min=eps), torch.zeros_like(g))
    return adv.reshape(-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return ``(B, N)``: the per-token estimate ``exp(d) - d - 1`` of KL(pi || pi_ref), ``d = log
    pi_ref - log pi`` (never negative; Schulman's k3, used by GRPO), 0 off the mask."""
    d = torch.where(mask, ref_logp - logp, torch.zeros_like(logp))
    return torch.where(mask, torch.exp(d) - d - 1.0, torch.zeros_like(logp))


def check_kl(seq_kl: torch.Tensor, rollout: int, step: int) -> float:
    """Return the mean of the per-sequence KLs ``seq_kl (B,)`` (sums of ``log pi - log pi_ref``
    over each response); raise LmlabError naming the rollout and step when it is NaN/inf or
    negative beyond sampling noise (4 standard errors and 0.1 nats): a sampled KL estimate can
    only be that negative when the tokens were not drawn from the distribution that scores them."""
    mean = float(seq_kl.float().mean())
    n = seq_kl.numel()
    sem = float(seq_kl.float().std()) / math.sqrt(n) if n > 1 else 0.0
    if not math.isfinite(mean):
        raise LmlabError(f"rollout {rollout} (step {step}): the KL to the reference is {mean}; likely cause: "
                         "the policy diverged (lower --lr) or bf16 overflow (use --precision fp32)")
    if mean < -(0.1 + 4 * sem):
        raise LmlabError(f"rollout {rollout} (step {step}): the KL to the reference is {mean:.3f} nats, "
                         "negative beyond noise; likely cause: the responses were not sampled from the "
                         "distribution that scored them (a sampling setting such as top-k, or another "
                         "temperature), or a reference that is not the starting policy")
    return mean
