import numpy as np
import pytest
from scipy import stats as sps

from rewardlab import stats


def test_correlations_match_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)
    assert stats.pearson(x, y).value == pytest.approx(sps.pearsonr(x, y)[0], abs=1e-12)
    assert stats.spearman(x, y).value == pytest.approx(sps.spearmanr(x, y)[0], abs=1e-12)
    y[:10] = y[0]  # ties
    assert stats.spearman(x, y).value == pytest.approx(sps.spearmanr(x, y)[0], abs=1e-12)


def test_ci_covers_value_and_is_deterministic():
    rng = np.random.default_rng(1)
    x = rng.normal(size=300)
    a, b = stats.mean(x, seed=3), stats.mean(x, seed=3)
    assert a == b
    assert a.ci[0] < a.value < a.ci[1]
    # the percentile interval of a mean is close to +-1.96 standard errors
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert a.ci[1] - a.ci[0] == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert a.n == 300


def test_grouped_bootstrap_resamples_groups():
    # 20 prompts with 50 identical rows each: rows carry no more information than prompts
    rng = np.random.default_rng(2)
    per_prompt = rng.normal(size=20)
    x = np.repeat(per_prompt, 50)
    groups = np.repeat(np.arange(20), 50)
    by_row = stats.mean(x)
    by_group = stats.mean(x, groups=groups)
    assert by_group.n_groups == 20 and by_group.n == 1000
    assert (by_group.ci[1] - by_group.ci[0]) > 4 * (by_row.ci[1] - by_row.ci[0])


def test_mean_difference_and_to_dict():
    d = stats.mean_difference([1.0, 2.0, 3.0] * 20, [0.0, 1.0] * 30)
    assert d.value == pytest.approx(1.5)
    assert d.ci[0] > 0
    assert d.to_dict() == {"value": d.value, "ci": list(d.ci), "n": 120}
