"""PPO's arithmetic against direct computations: GAE against a plain loop over each response,
whitening, the KL controllers, the reward on the last real token with right and left padding,
the clipped losses, and NaN-safe masking."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab.align import ppo
from lmlab.align.sequences import join, masked_whiten
from lmlab.errors import LmlabError


def _masks() -> torch.Tensor:
    """Responses of lengths 3, 1, 4 and 0 after prompts of different lengths, right-padded."""
    prompts, responses = [[1, 2], [3], [4, 5, 6], [7]], [[8, 9, 10], [11], [12, 13, 14, 15], []]
    return join(prompts, responses, pad_id=0).response_mask


def _gae_loop(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """GAE by the definition, over one response: A_t = sum_k (gamma lam)^k delta_{t+k}."""
    n = len(rewards)
    deltas = [rewards[t] + gamma * (values[t + 1] if t + 1 < n else 0.0) - values[t] for t in range(n)]
    return [sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t)) for t in range(n)]


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0)])
def test_gae_equals_a_direct_loop_over_each_response(gamma, lam):
    mask = _masks()
    torch.manual_seed(0)
    rewards, values = torch.randn(mask.shape), torch.randn(mask.shape)
    rewards[~mask] = float("nan")  # whatever sits off the mask must not leak
    values[~mask] = float("inf")
    adv, ret = ppo.gae(rewards, values, mask, gamma, lam)
    for b in range(mask.shape[0]):
        where = mask[b].nonzero().flatten().tolist()
        direct = _gae_loop(rewards[b, where].tolist(), values[b, where].tolist(), gamma, lam)
        assert adv[b, where].tolist() == pytest.approx(direct, abs=1e-5)
        v = values[b, where].tolist()
        assert ret[b, where].tolist() == pytest.approx([a + x for a, x in zip(direct, v)], abs=1e-5)
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()
    assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()


def test_gae_with_lambda_one_and_no_discount_is_return_minus_value():
    mask = _masks()
    rewards, values = torch.rand(mask.shape), torch.rand(mask.shape)
    adv, _ = ppo.gae(rewards, values, mask, 1.0, 1.0)
    for b in range(mask.shape[0]):
        where = mask[b].nonzero().flatten().tolist()
        to_go = [sum(rewards[b, where[i:]].tolist()) for i in range(len(where))]
        v = values[b, where].tolist()
        assert adv[b, where].tolist() == pytest.approx([g - x for g, x in zip(to_go, v)], abs=1e-5)


def test_whitened_advantages_have_mean_zero_and_unit_variance_on_the_mask_only():
    mask = _masks()
    adv = torch.randn(mask.shape) * 5 + 3
    adv[~mask] = float("nan")
    w = masked_whiten(adv, mask)
    on = w[mask]
    assert float(on.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(on.var(unbiased=True)) == pytest.approx(1.0, abs=1e-4)
    assert (w[~mask] == 0).all()


def test_fixed_kl_controller_keeps_beta():
    c = ppo.KLController(0.1)
    for kl in (0.0, 100.0, -5.0):
        assert c.update(kl, 256) == 0.1


def test_adaptive_kl_controller_follows_ziegler():
    c = ppo.KLController(0.2, target=6.0, horizon=10000)
    beta = 0.2
    for kl in (12.0, 6.6, 3.0, 6.0, 0.0):  # the error is clipped to [-0.2, 0.2]
        err = min(max(kl / 6.0 - 1, -0.2), 0.2)
        beta *= 1 + err * 512 / 10000
        assert c.update(kl, 512) == pytest.approx(beta, rel=1e-12)
    up = ppo.KLController(0.2, target=6.0)
    assert up.update(60.0, 10000) == pytest.approx(0.24)  # at most +20% per horizon of samples
    restored = ppo.KLController(0.2, target=6.0)
    restored.load_state_dict(up.state_dict())
    assert restored.beta == up.beta


@pytest.mark.parametrize("beta,target,horizon", [(0.0, None, 10), (-1.0, None, 10), (0.1, 0.0, 10),
                                                 (0.1, 6.0, 0)])
def test_kl_controller_refuses_bad_settings(beta, target, horizon):
    with pytest.raises(LmlabError):
        ppo.KLController(beta, target, horizon)


def test_reward_lands_on_the_last_real_response_token_with_right_padding():
    j = join([[1, 2], [3], [4, 5, 6]], [[7, 8, 9], [10], [11, 12]], pad_id=0)
    mask = j.response_mask
    logp, ref = torch.full(mask.shape, -1.0), torch.full(mask.shape, -1.5)
    scores = torch.tensor([10.0, 20.0, 30.0])
    rewards, kl = ppo.token_rewards(logp, ref, scores, mask, beta=0.2)
    assert ppo.last_index(mask).tolist() == [3, 0, 3]
    for b, last in enumerate([3, 0, 3]):
        # the token at target place `last` is the response's final token (its stop token if any)
        assert int(j.targets[b, last]) == [9, 10, 12][b]
        expected = torch.where(mask[b], torch.tensor(-0.1), torch.tensor(0.0))
        expected[last] += scores[b]
        assert rewards[b].tolist() == pytest.approx(expected.tolist())
    assert kl[mask].tolist() == pytest.approx([0.5] * int(mask.sum()))


def test_reward_lands_on_the_last_real_token_with_left_padding():
    # left-padded rows: padding, prompt, response; the last response token is the row's last place
    mask = torch.tensor([[False, False, True, True, True],
                         [False, False, False, False, True],
                         [False, True, True, True, False]])  # right padding after a response, too
    zeros = torch.zeros(mask.shape)
    rewards, _ = ppo.token_rewards(zeros, zeros, torch.tensor([1.0, 2.0, 3.0]), mask, beta=0.1)
    assert rewards.tolist() == [[0, 0, 0, 0, 1.0], [0, 0, 0, 0, 2.0], [0, 0, 0, 3.0, 0]]
    assert ppo.last_index(torch.zeros(1, 4, dtype=torch.bool)).tolist() == [-1]


def test_rewards_ignore_nan_off_the_mask():
    mask = _masks()
    logp, ref = torch.zeros(mask.shape), torch.zeros(mask.shape)
    logp[~mask] = float("nan")
    ref[~mask] = float("-inf")
    rewards, kl = ppo.token_rewards(logp, ref, torch.ones(4), mask, beta=0.1)
    assert torch.isfinite(rewards).all() and torch.isfinite(kl).all()
    assert float(rewards.sum()) == 3.0  # three rows have a response; the empty one gets nothing


def test_missing_stop_penalty_applies_to_unended_responses_only():
    out = ppo.penalise_missing_stop(torch.tensor([0.5, 0.5]), torch.tensor([True, False]), 1.0)
    assert out.tolist() == [0.5, -0.5]


def test_policy_loss_at_ratio_one_is_minus_the_mean_advantage():
    mask = _masks()
    logp = torch.randn(mask.shape)
    adv = torch.randn(mask.shape)
    pl = ppo.policy_loss(logp, logp.clone(), adv, mask, clip=0.2)
    assert float(pl.loss) == pytest.approx(-float(adv[mask].mean()), abs=1e-6)
    assert float(pl.clipfrac) == 0 and float(pl.approx_kl) == 0
    assert float(pl.ratio) == 1.0 and float(pl.ratio_dev) == 0.0


def test_policy_loss_clips_as_ppo():
    mask = torch.tensor([[True, True, True, True]])
    old = torch.zeros(1, 4)
    ratio = torch.tensor([[1.5, 0.5, 1.5, 0.5]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    pl = ppo.policy_loss(ratio.log(), old, adv, mask, clip=0.2)
    # per token max(-A r, -A clip(r)): -1.2 (clipped), -0.5, 1.5, 0.8 (clipped)
    assert float(pl.loss) == pytest.approx((-1.2 - 0.5 + 1.5 + 0.8) / 4)
    assert float(pl.clipfrac) == pytest.approx(0.5)
    assert float(pl.approx_kl) == pytest.approx(float((0.5 * ratio.log() ** 2).mean()))
    assert float(pl.ratio_dev) == pytest.approx(0.5)


def test_policy_loss_is_nan_safe_off_the_mask():
    mask = _masks()
    logp, old, adv = torch.zeros(mask.shape), torch.zeros(mask.shape), torch.ones(mask.shape)
    for t in (logp, old, adv):
        t[~mask] = float("nan")
    pl = ppo.policy_loss(logp, old, adv, mask)
    assert math.isfinite(float(pl.loss)) and math.isfinite(float(pl.ratio_dev))


def test_value_loss_clips_the_update():
    mask = torch.tensor([[True, True, False]])
    old = torch.tensor([[0.0, 0.0, float("nan")]])
    values = torch.tensor([[1.0, 0.1, float("nan")]])
    returns = torch.tensor([[1.0, 1.0, 0.0]])
    loss, frac = ppo.value_loss(values, old, returns, mask, clip=0.2)
    # token 0: max((1-1)^2, (0.2-1)^2) = 0.64; token 1: max(0.81, 0.81) = 0.81
    assert float(loss) == pytest.approx(0.5 * (0.64 + 0.81) / 2)
    assert float(frac) == pytest.approx(0.5)


def test_entropy_of_uniform_logits_is_log_vocab():
    mask = _masks()
    logits = torch.zeros(*mask.shape, 7)
    logits[~mask] = float("nan")
    assert float(ppo.entropy(logits, mask)) == pytest.approx(math.log(7), abs=1e-6)


def test_group_advantages_are_standardised_within_each_group():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    adv = ppo.group_advantages(scores, 4)
    s = 1 / math.sqrt(3)  # the unbiased std of [1, 0, 0, 1]; an all-equal group gets 0, not NaN
    assert adv.tolist() == pytest.approx([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0, 0, 0, 0])
    with pytest.raises(LmlabError):
        ppo.group_advantages(scores, 3)


def test_k3_kl_is_zero_at_the_reference_and_positive_elsewhere():
    mask = _masks()
    logp = torch.randn(mask.shape)
    assert (ppo.k3_kl(logp, logp, mask) == 0).all()
    other = ppo.k3_kl(logp, logp + torch.randn(mask.shape), mask)
    assert (other[mask] > 0).all() and (other[~mask] == 0).all()


def test_kl_check_stops_on_nan_and_on_kl_negative_beyond_noise():
    assert ppo.check_kl(torch.zeros(8), 1, 1) == 0.0
    ppo.check_kl(torch.tensor([0.3, -0.4, 0.1, -0.2]), 1, 1)  # noise around 0 passes
    with pytest.raises(LmlabError, match="rollout 3 \\(step 9\\).*nan"):
        ppo.check_kl(torch.tensor([0.1, float("nan")]), 3, 9)
    with pytest.raises(LmlabError, match="negative beyond noise"):
        ppo.check_kl(torch.full((16,), -2.0) + 0.01 * torch.randn(16), 2, 5)
