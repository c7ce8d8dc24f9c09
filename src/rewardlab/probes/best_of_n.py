"""Best-of-n selection: how much true reward does picking the best of n samples by a score reach?

For each prompt there are N sampled completions with their true rewards `reward[p, j]` and, per
selector, scores `score[p, j]` (the true reward itself is the oracle selector). Best-of-n with
n <= N is evaluated exactly over every n-subset of the N samples rather than on one random draw:
with the samples ranked by score (ties broken by sample index, lower first), the one ranked i-th
(0-based) is the pick of an n-subset exactly when it is in the subset and the i samples ranked above
it are not, which happens for C(N - 1 - i, n - 1) of the C(N, n) subsets. So

    E[reward of the pick | prompt p] = sum_i reward[p, rank_i] * C(N - 1 - i, n - 1) / C(N, n),

and best-of-1 is the mean reward of the N samples whatever the score. The CI resamples prompts.
"""

from __future__ import annotations

from math import comb
from typing import Sequence

import numpy as np

from rewardlab import stats
from rewardlab.errors import InputError


def pick_weights(n_samples: int, n: int) -> np.ndarray:
    """[n_samples]: the probability that the i-th ranked sample is the best of a uniform n-subset."""
    if not 1 <= n <= n_samples:
        raise InputError(f"best-of-n needs 1 <= n <= the samples per prompt ({n_samples}), got n = {n}")
    total = comb(n_samples, n)
    return np.asarray([comb(n_samples - 1 - i, n - 1) / total for i in range(n_samples)], dtype=np.float64)


def expected_pick_reward(reward: np.ndarray, score: np.ndarray, n: int) -> np.ndarray:
    """[n_prompts]: the expected true reward of the best-of-n pick by `score`, per prompt.

    reward, score: [n_prompts, n_samples]."""
    reward, score = np.asarray(reward, dtype=np.float64), np.asarray(score, dtype=np.float64)
    if reward.shape != score.shape or reward.ndim != 2:
        raise InputError(f"reward {reward.shape} and score {score.shape} must both be [n_prompts, n_samples]")
    order = np.argsort(-score, axis=1, kind="stable")  # descending score, ties by lower index
    ranked = np.take_along_axis(reward, order, axis=1)
    return ranked @ pick_weights(reward.shape[1], n)


def best_of_n_table(reward: np.ndarray, scores: dict[str, np.ndarray], ns: Sequence[int], n_boot: int = 1000,
                    seed: int = 0) -> list[dict]:
    """One row per selector and n: the mean over prompts of the expected pick's true reward, with a
    bootstrap CI over prompts, and its gain over best-of-1 (paired over prompts).

    reward: [n_prompts, n_samples]; scores: selector name -> [n_prompts, n_samples]."""
    reward = np.asarray(reward, dtype=np.float64)
    base = reward.mean(axis=1)
    rows = []
    for name, score in scores.items():
        for n in ns:
            picked = expected_pick_reward(reward, score, n)
            rows.append({"selector": name, "n": int(n), "n_prompts": int(reward.shape[0]),
                         "reward": stats.mean(picked, n_boot=n_boot, seed=seed).to_dict(),
                         "gain_over_best_of_1": stats.mean(picked - base, n_boot=n_boot, seed=seed).to_dict()})
    return rows
