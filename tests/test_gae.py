"""GAE against brute-force formulas: lambda 0 (one-step TD) and lambda 1 (Monte Carlo), with padding."""

from __future__ import annotations

import pytest
import torch

from rewardlab.rl.ppo import gae

MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])


def _episode(seed=0):
    g = torch.Generator().manual_seed(seed)
    rewards, values = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    return rewards, values


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_lambda_zero_is_one_step_td(gamma):
    rewards, values = _episode()
    adv, ret = gae(rewards, values, MASK, gamma, 0.0)
    for b in range(3):
        n = int(MASK[b].sum())
        for t in range(n):
            next_v = values[b, t + 1] if t + 1 < n else 0.0
            assert float(adv[b, t]) == pytest.approx(float(rewards[b, t] + gamma * next_v - values[b, t]))
            assert float(ret[b, t]) == pytest.approx(float(adv[b, t] + values[b, t]))
        assert (adv[b, n:] == 0).all() and (ret[b, n:] == 0).all()


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_lambda_one_is_discounted_return_minus_value(gamma):
    rewards, values = _episode(1)
    adv, ret = gae(rewards, values, MASK, gamma, 1.0)
    for b in range(3):
        n = int(MASK[b].sum())
        for t in range(n):
            mc = sum(gamma ** k * float(rewards[b, t + k]) for k in range(n - t))
            assert float(adv[b, t]) == pytest.approx(mc - float(values[b, t]))
            assert float(ret[b, t]) == pytest.approx(mc)


def test_general_lambda_matches_weighted_td_sum():
    rewards, values = _episode(2)
    gamma, lam = 0.95, 0.7
    adv, _ = gae(rewards, values, MASK, gamma, lam)
    for b in range(3):
        n = int(MASK[b].sum())
        v = [float(x) for x in values[b, :n]] + [0.0]
        deltas = [float(rewards[b, t]) + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            expected = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
            assert float(adv[b, t]) == pytest.approx(expected)


def test_pads_do_not_leak():
    rewards, values = _episode(3)
    adv, ret = gae(rewards, values, MASK, 1.0, 0.95)
    garbage_r = torch.where(MASK.bool(), rewards, torch.full_like(rewards, 1e3))
    garbage_v = torch.where(MASK.bool(), values, torch.full_like(values, -1e3))
    adv2, ret2 = gae(garbage_r, garbage_v, MASK, 1.0, 0.95)
    torch.testing.assert_close(adv, adv2)
    torch.testing.assert_close(ret, ret2)
