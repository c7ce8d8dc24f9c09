"""Multi-turn PPO: cross-turn credit against brute-force GAE on a hand-made conversation, and the user's
tokens getting exactly zero gradient from the policy, value and entropy losses."""

from __future__ import annotations

import pytest
import torch

from rewardlab.rl.config import PPOConfig
from rewardlab.rl.ppo import entropy, gae, masked_mean, policy_gae, ppo_losses
from rewardlab.rl.rollout import completion_logprobs_from_logits

# one conversation of 8 completion slots: assistant turn 1 (0, 1), the user's turn (2, 3, 4), assistant
# turn 2 (5, 6), a pad (7); a second row with a one-token turn 1 and no pad
TURN1 = torch.tensor([[1, 1, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]])
TURN2 = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1, 1, 1]])


def _brute_force(rewards, values, positions, gamma, lam):
    """A_t = sum_k (gamma lam)^k delta_{t+k} over the listed positions (the episode), V after the last = 0."""
    r = [float(rewards[p]) for p in positions]
    v = [float(values[p]) for p in positions] + [0.0]
    deltas = [r[i] + gamma * v[i + 1] - v[i] for i in range(len(r))]
    adv = [sum((gamma * lam) ** k * deltas[i + k] for k in range(len(r) - i)) for i in range(len(r))]
    return dict(zip(positions, adv)), {p: a + v[i] for i, (p, a) in enumerate(zip(positions, adv))}


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_conversation_credit_matches_brute_force(gamma, lam):
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(2, 8, generator=g, dtype=torch.float64), torch.randn(2, 8, generator=g,
                                                                                       dtype=torch.float64)
    policy = TURN1 + TURN2
    adv, ret = policy_gae(rewards, values, policy, gamma, lam)
    for b in range(2):
        positions = policy[b].nonzero().flatten().tolist()
        exp_adv, exp_ret = _brute_force(rewards[b], values[b], positions, gamma, lam)
        for t in range(8):
            assert float(adv[b, t]) == pytest.approx(exp_adv.get(t, 0.0))
            assert float(ret[b, t]) == pytest.approx(exp_ret.get(t, 0.0))


def test_turn_2_reward_reaches_turn_1_only_under_conversation_credit():
    values = torch.zeros(2, 8, dtype=torch.float64)
    rewards = torch.zeros(2, 8, dtype=torch.float64)
    rewards[0, 6] = 1.0  # a bonus on the last token of turn 2
    adv, _ = policy_gae(rewards, values, TURN1 + TURN2, 0.9, 0.5)
    # user tokens are skipped: turn 1's last token is one policy step before turn 2's first
    assert float(adv[0, 1]) == pytest.approx((0.9 * 0.5) ** 2) and float(adv[0, 0]) == pytest.approx((0.9 * 0.5) ** 3)
    assert (adv[0, 2:5] == 0).all() and adv[0, 7] == 0
    per_turn = sum(policy_gae(rewards, values, m, 0.9, 0.5)[0] for m in (TURN1, TURN2))
    assert (per_turn[0, :2] == 0).all() and float(per_turn[0, 5]) == pytest.approx(0.45)


def test_a_prefix_mask_is_plain_gae():
    g = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    for a, b in zip(policy_gae(rewards, values, mask, 0.95, 0.9), gae(rewards, values, mask, 0.95, 0.9)):
        assert torch.equal(a, b)


def test_user_tokens_get_exactly_zero_gradient():
    """Autograd through the minibatch losses PPO minimises (policy, value, entropy): the logits predicting
    the user's tokens and the values at them get gradient exactly 0, the assistant's tokens do not."""
    cfg, P, V = PPOConfig(base="x"), 3, 11
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, P + 8, V, generator=g, requires_grad=True)
    values = torch.randn(2, 8, generator=g, requires_grad=True)
    completion = torch.randint(V, (2, 8), generator=g)
    m = (TURN1 + TURN2).float()
    with torch.no_grad():
        old_logp = completion_logprobs_from_logits(logits + 0.3 * torch.randn(logits.shape, generator=g),
                                                   completion, P, temperature=1.0)[0]
    new_logp, new_all = completion_logprobs_from_logits(logits, completion, P, temperature=1.0)
    pg, vf, _, _ = ppo_losses(new_logp, values, old_logp, values.detach() + 0.1, torch.randn(2, 8, generator=g),
                              torch.randn(2, 8, generator=g), m, cfg)
    loss = pg + cfg.vf_coef * vf - 0.01 * masked_mean(entropy(new_all), m)
    loss.backward()
    completion_grad = logits.grad[:, P - 1:P - 1 + 8]  # logits at P - 1 + t predict completion token t
    user = ~m.bool()
    assert (completion_grad[user] == 0).all() and (values.grad[user] == 0).all()
    assert (completion_grad[m.bool()].abs().sum(-1) > 0).all() and (values.grad[m.bool()] != 0).all()
