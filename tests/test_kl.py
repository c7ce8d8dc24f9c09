"""KL estimators against brute-force formulas, and the adaptive controller."""

from __future__ import annotations

import math

import pytest
import torch

from rewardlab.rl.kl_penalty import KLController, exact_kl, kl_per_token


def _dists(seed=0, V=7):
    g = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(2, 3, V, generator=g, dtype=torch.float64), -1)
    logq = torch.log_softmax(torch.randn(2, 3, V, generator=g, dtype=torch.float64), -1)
    return logp, logq


def test_exact_kl_both_directions_brute_force():
    logp, logq = _dists()
    forward = kl_per_token("exact", None, None, logp, logq)
    reverse = kl_per_token("exact_reverse", None, None, logp, logq)
    for b in range(2):
        for t in range(3):
            p, q = logp[b, t].exp().tolist(), logq[b, t].exp().tolist()
            assert float(forward[b, t]) == pytest.approx(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
            assert float(reverse[b, t]) == pytest.approx(sum(qi * math.log(qi / pi) for pi, qi in zip(p, q)))


def test_exact_kl_zero_mass_and_infinite():
    logp = torch.log(torch.tensor([0.5, 0.5, 0.0]))
    logq = torch.log(torch.tensor([0.25, 0.25, 0.5]))
    assert float(exact_kl(logp, logq)) == pytest.approx(math.log(2))  # p = 0 contributes nothing
    assert math.isinf(float(exact_kl(logq, logp)))                     # q > 0 where p = 0
    x = logp.clone().requires_grad_()
    exact_kl(x, logq).backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name,formula", [
    ("k1", lambda lp, lq: lp - lq),
    ("k2", lambda lp, lq: 0.5 * (lq - lp) ** 2),
    ("k3", lambda lp, lq: math.exp(lq - lp) - 1 - (lq - lp)),
])
def test_sample_estimators_formulas(name, formula):
    logp, logq = _dists(1)
    lp, lq = logp[..., 0], logq[..., 0]
    est = kl_per_token(name, lp, lq)
    for b in range(2):
        for t in range(3):
            assert float(est[b, t]) == pytest.approx(formula(float(lp[b, t]), float(lq[b, t])))


@pytest.mark.parametrize("name", ["k1", "k3"])
def test_unbiased_estimators_average_to_exact(name):
    logp, logq = _dists(2, V=5)
    p = logp[0, 0].exp()
    lp, lq = logp[0, 0], logq[0, 0]
    expected = float((p * kl_per_token(name, lp, lq)).sum())  # expectation over the sampled token
    assert expected == pytest.approx(float(exact_kl(lp, lq)))


def test_k2_and_k3_nonnegative():
    logp, logq = _dists(3)
    assert (kl_per_token("k2", logp[..., 1], logq[..., 1]) >= 0).all()
    assert (kl_per_token("k3", logp[..., 1], logq[..., 1]) >= 0).all()


def test_adaptive_controller():
    fixed = KLController(0.1)
    fixed.update(100.0, 64)
    assert fixed.coef == 0.1
    ctl = KLController(0.2, target=6.0, horizon=10_000)
    ctl.update(12.0, 1000)  # error clipped to +0.2
    assert ctl.coef == pytest.approx(0.2 * (1 + 0.2 * 1000 / 10_000))
    ctl.update(5.4, 1000)   # error -0.1
    assert ctl.coef == pytest.approx(0.2 * 1.02 * (1 - 0.1 * 0.1))


def test_unknown_estimator():
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_per_token("k9", torch.zeros(1), torch.zeros(1))
