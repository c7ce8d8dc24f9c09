"""Scores of ranked hypotheses against a truth: exact values on constructed rankings."""

import itertools

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from rewardlab.organisms.score import auroc, over_seeds, pair_accuracy, precision_at_k, spearman_truth


def brute_force_auroc(scores, positive):
    pairs = [(s, t) for s, p in zip(scores, positive) if p for t, q in zip(scores, positive) if not q]
    return sum(1.0 if s > t else 0.5 if s == t else 0.0 for s, t in pairs) / len(pairs)


def test_auroc_exact_on_constructed_rankings():
    assert auroc([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 0]) == pytest.approx(5 / 6)
    assert auroc([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0
    assert auroc([0, 1, 2, 3], [1, 1, 0, 0]) == 0.0
    assert auroc([1, 1, 1, 1], [1, 0, 0, 1]) == 0.5
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 4, size=12).astype(float)  # many ties
        positive = rng.random(12) < 0.3
        positive[:2] = [True, False]
        assert auroc(scores, positive) == pytest.approx(brute_force_auroc(scores, positive))
        assert auroc(scores, positive) == pytest.approx(roc_auc_score(positive, scores))
    assert np.isnan(auroc([1, 2], [0, 0]))


def test_precision_at_k_exact_with_ties_as_their_expectation():
    assert precision_at_k([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == 0.5  # k = 2 positives
    assert precision_at_k([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0], k=3) == pytest.approx(2 / 3)
    assert precision_at_k([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0
    assert precision_at_k([1, 1, 1, 0], [1, 0, 0, 0]) == pytest.approx(1 / 3)
    # enumeration of every tie break gives the same expectation
    scores, positive, k = [2, 1, 1, 1, 0], [0, 1, 0, 1, 1], 3
    orders = [o for o in itertools.permutations(range(5))
              if all(scores[a] >= scores[b] for a, b in zip(o, o[1:]))]
    expected = np.mean([sum(positive[i] for i in o[:k]) / k for o in orders])
    assert precision_at_k(scores, positive, k=k) == pytest.approx(expected)


def test_spearman_truth_and_pair_accuracy():
    truth = [0.0, 1.0, -2.0, 3.0, 0.5]
    assert spearman_truth([t ** 3 for t in truth], truth) == pytest.approx(1.0)
    assert spearman_truth([-t for t in truth], truth) == pytest.approx(-1.0)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=30), rng.integers(0, 3, size=30)
    assert spearman_truth(x, y) == pytest.approx(sps.spearmanr(x, y).statistic)
    assert pair_accuracy([1.0, -1.0, 0.0, 2.0], [1, 1, 1, -1]) == pytest.approx((1 + 0 + 0.5 + 0) / 4)
    assert pair_accuracy([0.0] * 5, [1, -1, 1, 1, -1]) == 0.5


def test_over_seeds_resamples_seeds_then_samples():
    same = over_seeds([lambda rng: 0.7] * 3, n_boot=200)
    assert same.value == pytest.approx(0.7) and same.ci == pytest.approx((0.7, 0.7)) and same.n == 3
    spread = over_seeds([lambda rng, v=v: v for v in (0.0, 1.0)], n_boot=400)
    assert spread.value == 0.5 and spread.ci[0] == 0.0 and spread.ci[1] == 1.0

    # a random ranking of 60 tokens, 3 planted, over 3 seeds: AUROC near 0.5 with a CI containing it
    positive = np.zeros(60, dtype=bool)
    positive[:3] = True

    def random_auroc(seed):
        full = np.random.default_rng(seed).permutation(60)
        return lambda rng: auroc(full if rng is None else rng.permutation(60), positive)

    est = over_seeds([random_auroc(s) for s in range(3)], n_boot=300)
    assert est.ci[0] <= 0.5 <= est.ci[1]
    assert est.ci[0] <= est.value <= est.ci[1]
    assert over_seeds([random_auroc(s) for s in range(3)], n_boot=300).to_dict() == est.to_dict()
