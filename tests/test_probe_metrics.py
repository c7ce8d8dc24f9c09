"""Probe metrics against scipy / sklearn on fixed data, and grouped splits that never share a prompt."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import r2_score, roc_auc_score

from rewardlab.errors import InputError
from rewardlab.probes.metrics import auc_score, binary_labels, evaluate
from rewardlab.probes.splits import grouped_split
from rewardlab.text import prompt_id


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    groups = np.repeat([f"p{i}" for i in range(20)], 5)
    y = rng.normal(size=100) + np.repeat(rng.normal(size=20), 5)
    score = y + rng.normal(scale=1.0, size=100)
    score[:10] = np.round(score[:10])  # some ties
    return y, score, groups


def test_metrics_match_references(data):
    y, score, groups = data
    m = evaluate(y, score, groups, n_boot=200)
    assert m["r2"].value == pytest.approx(r2_score(y, score))
    assert m["pearson"].value == pytest.approx(sps.pearsonr(y, score)[0])
    assert m["spearman"].value == pytest.approx(sps.spearmanr(y, score)[0])
    within = [sps.spearmanr(y[groups == g], score[groups == g])[0] for g in np.unique(groups)]
    assert m["spearman_within"].value == pytest.approx(np.mean(within))
    correct = total = 0
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        for i, j in itertools.combinations(idx, 2):
            if y[i] != y[j]:
                total += 1
                correct += (y[i] - y[j]) * (score[i] - score[j]) > 0
    assert m["pairwise_accuracy"].value == pytest.approx(correct / total)
    assert m["auc"].value == pytest.approx(roc_auc_score(y > np.median(y), score))
    for name, est in m.items():
        assert est.ci[0] <= est.value <= est.ci[1], name
    assert m["spearman"].n == 100 and m["spearman"].n_groups == 20


def test_auc_ties_and_binary_labels():
    labels = np.array([0, 0, 1, 1, 1, 0, 1])
    score = np.array([0.1, 0.5, 0.5, 0.9, 0.1, 0.3, 0.7])
    assert auc_score(labels, score) == pytest.approx(roc_auc_score(labels, score))
    assert list(binary_labels(np.array([2.0, 5.0, 5.0]))) == [0.0, 1.0, 1.0]


def test_prompt_only_score_counts_zero_within_prompt():
    y = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 5.0])
    groups = ["a", "a", "a", "b", "b", "b"]
    score = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # constant inside each prompt
    m = evaluate(y, score, groups, n_boot=50)
    assert m["spearman_within"].value == 0.0
    assert m["pairwise_accuracy"].value == 0.0  # ties lose


def test_grouped_split_never_shares_a_prompt():
    rng = np.random.default_rng(0)
    groups = [prompt_id(f"prompt {i}") for i in rng.integers(0, 40, size=500)]
    split = grouped_split(groups, seed=1)
    parts = [set(np.asarray(groups)[idx]) for idx in (split.train, split.val, split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sorted(np.concatenate([split.train, split.val, split.test]).tolist()) == list(range(500))
    n_groups = [len(p) for p in parts]
    assert sum(n_groups) == len(set(groups)) and n_groups[0] > n_groups[1] > 0
    # depends on the prompt set and seed, not on row order
    perm = rng.permutation(500)
    again = grouped_split([groups[i] for i in perm], seed=1)
    assert {groups[perm[i]] for i in again.test} == parts[2]
    assert grouped_split(groups, seed=2).test.tolist() != split.test.tolist()
    with pytest.raises(InputError, match="distinct prompts"):
        grouped_split(["a", "a", "b"])
