"""The sentiment world's earlier measurements on organisms (`organisms.measures`): the steering effect over
random directions with its paired bootstrap, pooling over seeds, and the pieces they rest on, on constructed
inputs with known answers."""

import numpy as np
import pytest

from rewardlab import stats
from rewardlab.errors import InputError
from rewardlab.organisms.measures import measures_cell, steering_over_random
from rewardlab.probes.cross import mean_difference_direction

PROMPTS = ["a", "a", "b", "b"]


def _steered(up_rewards, random_up, alpha_up=1.0):
    """A `dose_response(..., keep_random_rewards=True)` result at alphas (0, 1) with unsteered rewards 0."""
    samples = [{"direction": "d", "alpha": alpha, "prompt": p, "completion": "", "reward": r}
               for alpha, rewards in ((0.0, [0.0] * 4), (1.0, up_rewards)) for p, r in zip(PROMPTS, rewards)]
    random_effects = [[0.0, float(np.mean(r))] for r in random_up]
    return {"alphas": [0.0, 1.0], "typical_norm": 2.0, "samples": samples,
            "random_rewards": [[[0.0] * 4, list(r)] for r in random_up], "random_effects": random_effects,
            "directions": {"d": {"summary": {"alpha_up": alpha_up, "random_max_abs_effect": max(
                abs(e[1]) for e in random_effects)}}}}


def test_steering_effect_over_random_with_a_paired_bootstrap_over_prompts():
    # direction: +2 on prompt a, +4 on b; random controls: +1/-1 (mean 0) and +1 everywhere (mean 1)
    out = steering_over_random(_steered([2, 2, 4, 4], [[1, 1, -1, -1], [1, 1, 1, 1]]), "d", PROMPTS, seed=0, n_boot=300)
    assert out["alpha_up"] == 1.0 and out["n"] == 4 and out["n_prompts"] == 2 and out["random_max_abs_effect"] == 1.0
    effect, ratio = out["effect"], out["over_random"]
    assert effect["value"] == 3.0 and ratio["value"] == 3.0
    # resampling prompts {a, b}: effect 2, 3 or 4; the second control's |mean| is 1 in every draw, the first's
    # at most 1, so the ratio's draws are the effect's, paired
    assert set(effect["draws"]) <= {2.0, 3.0, 4.0} and ratio["draws"] == effect["draws"]
    assert len(effect["draws"]) == 300 and 2.0 <= effect["ci"][0] <= 3.0 <= effect["ci"][1] <= 4.0
    assert effect["n"] == 4 and effect["n_groups"] == 2
    again = steering_over_random(_steered([2, 2, 4, 4], [[1, 1, -1, -1], [1, 1, 1, 1]]), "d", PROMPTS, 0, 300)
    assert again == out


def test_steering_without_a_fluent_alpha_or_moving_controls():
    none = steering_over_random(_steered([2, 2, 4, 4], [[1, 1, 1, 1]], alpha_up=None), "d", PROMPTS, 0, 100)
    assert none["effect"] is None and none["over_random"] is None and none["alpha_up"] is None
    still = steering_over_random(_steered([2, 2, 4, 4], [[0, 0, 0, 0]]), "d", PROMPTS, 0, 100)
    assert still["effect"]["value"] == 3.0 and still["over_random"] is None  # no control moved: no ratio


def _seed(relevance, draws, count, steer=None):
    return {"reward_relevance": {"post_minus_base": {"value": relevance, "draws": draws}},
            "crosscoder": {"post_only": count},
            "steering": {"effect": steer, "over_random": None}}


def test_measures_cell_pools_seeds_then_their_draws():
    cell = measures_cell([_seed(1.0, [0.5, 1.5], 2, {"value": 3.0, "draws": [3.0]}), _seed(3.0, [3.0], 4)],
                         n_boot=400)
    rel = cell["relevance_post_minus_base"]
    assert rel.value == 2.0 and rel.n == 2 and rel.ci[0] >= 0.5 and rel.ci[1] <= 3.0 and rel.ci[0] < 2.0 < rel.ci[1]
    count = cell["crosscoder_post_only"]
    assert count.value == 3.0 and count.ci == (2.0, 4.0) and count.n == 2  # no within-seed draws
    assert cell["steer_effect"].value == 3.0 and cell["steer_effect"].n == 1  # the seed that has one
    assert cell["steer_over_random"] is None


def test_mean_difference_direction_with_a_sparse_target():
    x = np.arange(12, dtype=float).reshape(6, 2)
    y = np.array([0, 0, 0, 0, 1, 2])  # median 0 = minimum: no row below it
    assert mean_difference_direction(x, y) == pytest.approx(x[4:].mean(0) - x[:4].mean(0))
    top = np.array([0, 1, 2, 2, 2, 2])  # median = maximum
    assert mean_difference_direction(x, top) == pytest.approx(x[2:].mean(0) - x[:2].mean(0))
    balanced = np.array([0, 1, 2, 3, 4, 5])  # no ties at the median: unchanged
    assert mean_difference_direction(x, balanced) == pytest.approx(x[3:].mean(0) - x[:3].mean(0))
    with pytest.raises(InputError, match="does not vary"):
        mean_difference_direction(x, np.ones(6))


def test_bootstrap_hands_out_its_draws():
    draws: list = []
    est = stats.bootstrap(np.mean, np.arange(10.0), n_boot=200, seed=3, draws_out=draws)
    assert len(draws) == 200 and est.ci == pytest.approx(tuple(np.quantile(draws, [0.025, 0.975])))
    assert stats.bootstrap(np.mean, np.arange(10.0), n_boot=200, seed=3) == est
