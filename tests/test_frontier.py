"""The KL-optimal frontier: tilted weights, KL and gain against brute force and closed forms; reference sampling."""

import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rewardlab.errors import InputError
from rewardlab.rl.frontier import beta_for, frontier_point, reference_samples, tilt_weights
from rewardlab.world.grammar import vocabulary
from rewardlab.world.tokenizer import build_tokenizer


def test_the_tilt_of_a_uniform_reference_is_exact_against_brute_force():
    # N distinct outcomes listed once each: the reference is uniform on them, and the tilted policy is exactly
    # exp(r / beta) normalized, its KL sum pi log(pi N), whatever N
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(3, 7))
    grammatical = (rng.random((3, 7)) < 0.6).astype(float)
    beta = 0.7
    point = frontier_point(rewards, beta, {"grammatical": grammatical}, n_boot=50)
    tilted, kls, gram = [], [], []
    for r, g in zip(rewards, grammatical):
        pi = [math.exp(x / beta) for x in r]
        pi = [p / sum(pi) for p in pi]
        tilted.append(sum(p * x for p, x in zip(pi, r)))
        kls.append(sum(p * math.log(p * len(r)) for p in pi))
        gram.append(sum(p * x for p, x in zip(pi, g)))
    mu, sd = rewards.mean(), rewards.std()
    assert point.reward.value == pytest.approx(np.mean(tilted), abs=1e-12)
    assert point.gain.value == pytest.approx((np.mean(tilted) - mu) / sd, abs=1e-12)
    assert point.kl.value == pytest.approx(np.mean(kls), abs=1e-12)
    assert point.measures["grammatical"].value == pytest.approx(np.mean(gram), abs=1e-12)
    for e in (point.reward, point.gain, point.kl, point.measures["grammatical"]):
        assert e.ci[0] <= e.value <= e.ci[1] and e.n == 3
    assert np.allclose(tilt_weights(rewards, beta).sum(1), 1.0)


def test_a_gaussian_reward_tilts_to_the_closed_form():
    # r ~ N(0, 1) under the reference: pi_beta is N(1 / beta, 1), so the gain is 1 / beta stds and
    # KL(pi_beta || ref) = 1 / (2 beta^2)
    rewards = np.random.default_rng(1).normal(size=(4, 50_000))
    for beta in (2.0, 1.0):
        point = frontier_point(rewards, beta, n_boot=20)
        assert point.gain.value == pytest.approx(1 / beta, rel=0.03)
        assert point.kl.value == pytest.approx(1 / (2 * beta ** 2), rel=0.05)
        assert point.ess < 50_000


def test_beta_for_inverts_the_kl_and_the_gain():
    rewards = np.random.default_rng(2).normal(size=(8, 400))
    point = frontier_point(rewards, 0.8, n_boot=10)
    assert beta_for(rewards, kl=point.kl.value) == pytest.approx(0.8, rel=1e-6)
    assert beta_for(rewards, gain=point.gain.value) == pytest.approx(0.8, rel=1e-6)
    with pytest.raises(InputError, match="outside what these samples reach"):
        beta_for(rewards, kl=math.log(400) + 1)  # more than a point mass on one sample costs
    with pytest.raises(InputError, match="exactly one"):
        beta_for(rewards)


def test_bad_rewards_are_refused():
    with pytest.raises(InputError, match="non-finite"):
        frontier_point(np.array([[0.0, float("nan")]]), 1.0)
    with pytest.raises(InputError, match="one value per sample"):
        frontier_point(np.zeros((2, 3)), 1.0, {"g": np.zeros((2, 2))})
    with pytest.raises(InputError, match="beta must be above 0"):
        tilt_weights(np.zeros((1, 2)), 0.0)


def test_reference_samples_score_each_prompts_rows():
    tok = build_tokenizer(vocabulary())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4)).eval()
    prompts = ["the film was", "i", "it was a"]
    seen = []

    def reward(texts, ps):
        seen.extend(ps)
        return [float(len(t.split())) for t in texts]

    kw = dict(max_new_tokens=6, seed=3, rows=4)
    out = reference_samples(model, tok, prompts, 5, reward, {"prompt_words": lambda t, p: len(p.split())}, **kw)
    assert out["rewards"].shape == out["prompt_words"].shape == (3, 5)
    assert seen == [p for p in prompts for _ in range(5)]
    assert (out["prompt_words"] == np.array([[3], [1], [3]])).all()
    again = reference_samples(model, tok, prompts, 5, reward, **kw)
    assert np.array_equal(out["rewards"], again["rewards"])  # seeded: the same samples whatever else ran
