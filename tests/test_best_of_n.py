"""Best-of-n evaluated exactly over n-subsets equals brute-force enumeration of the subsets."""

import itertools

import numpy as np
import pytest

from rewardlab.errors import InputError
from rewardlab.probes.best_of_n import best_of_n_table, expected_pick_reward, pick_weights


def brute_force(reward: np.ndarray, score: np.ndarray, n: int) -> np.ndarray:
    """Mean over every n-subset of the true reward of its highest-scored sample (ties: lower index)."""
    out = []
    for r, s in zip(reward, score):
        picks = [r[min(subset, key=lambda j: (-s[j], j))] for subset in itertools.combinations(range(len(r)), n)]
        out.append(np.mean(picks))
    return np.asarray(out)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6])
def test_equals_enumeration_with_ties(n):
    rng = np.random.default_rng(n)
    reward = rng.normal(size=(7, 6))
    score = rng.integers(0, 3, size=(7, 6)).astype(float)  # many ties
    np.testing.assert_allclose(expected_pick_reward(reward, score, n), brute_force(reward, score, n), atol=1e-12)


def test_weights_sum_to_one_and_endpoints():
    for n_samples in (1, 4, 16):
        for n in range(1, n_samples + 1):
            w = pick_weights(n_samples, n)
            assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    assert pick_weights(16, 1) == pytest.approx(np.full(16, 1 / 16))  # best-of-1: the mean
    assert pick_weights(16, 16)[0] == 1.0  # best-of-N: the top-ranked sample


def test_table_oracle_dominates_and_gains_are_paired():
    rng = np.random.default_rng(0)
    reward = rng.normal(size=(40, 8))
    noisy = reward + rng.normal(scale=2.0, size=reward.shape)
    rows = best_of_n_table(reward, {"true_reward": reward, "noisy": noisy, "anti": -reward}, [1, 4, 8], n_boot=200)
    by = {(r["selector"], r["n"]): r for r in rows}
    assert by[("true_reward", 1)]["reward"]["value"] == pytest.approx(reward.mean())
    assert by[("true_reward", 1)]["gain_over_best_of_1"]["value"] == pytest.approx(0.0, abs=1e-12)
    for n in (4, 8):
        assert by[("true_reward", n)]["reward"]["value"] > by[("noisy", n)]["reward"]["value"] > \
            by[("anti", n)]["reward"]["value"]
        assert by[("true_reward", n)]["gain_over_best_of_1"]["ci"][0] > 0
        assert by[("anti", n)]["gain_over_best_of_1"]["ci"][1] < 0
    assert by[("true_reward", 8)]["reward"]["value"] == pytest.approx(reward.max(axis=1).mean())


def test_bad_n():
    with pytest.raises(InputError):
        expected_pick_reward(np.zeros((2, 3)), np.zeros((2, 3)), 4)
    with pytest.raises(InputError):
        expected_pick_reward(np.zeros((2, 3)), np.zeros((2, 4)), 1)
