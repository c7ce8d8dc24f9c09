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


@pytest.mark.parametrize("values", [
    [3.0, 1.0, 2.0],
    [2.0, 2.0, 1.0, 2.0, 5.0, 1.0],
    [7, 7, 7],
    [1.5],
    [],
    [0.0, -0.0, 1.0],
    list(np.random.default_rng(5).integers(0, 6, size=400)),
])
def test_average_ranks_equal_scipy_rankdata(values):
    assert np.array_equal(stats.average_ranks(values), sps.rankdata(values))


def test_average_ranks_of_nan_are_nan_as_scipy():
    assert np.isnan(stats.average_ranks([1.0, np.nan, 0.5])).all()
    assert np.isnan(sps.rankdata([1.0, np.nan, 0.5])).all()


def test_pearson_r_matches_numpy_and_is_nan_when_undefined():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert stats.pearson_r(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-14)
    assert stats.pearson_r(x, 2 * x + 1) == pytest.approx(1.0, abs=1e-15)
    assert stats.pearson_r(x, -x) == pytest.approx(-1.0, abs=1e-15)
    # constant in exact arithmetic though its float mean is not 0.1: undefined, not +-1
    assert np.isnan(stats.pearson_r([0.1, 0.1, 0.1], [1.0, 2.0, 3.0]))
    assert np.isnan(stats.pearson_r([1.0], [2.0]))
    assert np.isnan(stats.pearson_r([1.0, np.nan], [2.0, 3.0]))


def test_group_draw_concatenates_the_picked_groups_in_order():
    rng = np.random.default_rng(4)
    groups = rng.choice(["a", "b", "c", "d", "e"], size=40)
    units = stats.group_rows(groups, len(groups))
    draw = stats._GroupDraw(units)
    for _ in range(20):
        picked = rng.integers(0, len(units), size=len(units))
        assert np.array_equal(draw(picked), np.concatenate([units[i] for i in picked]))


def test_bootstrap_draws_equal_the_row_by_row_reference():
    """The percentile CI from the same rng stream as a plain loop that resamples whole groups."""
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=90), rng.normal(size=90)
    groups = rng.integers(0, 25, size=90)
    units = stats.group_rows(groups, 90)
    ref_rng, expected = np.random.default_rng(11), []
    for _ in range(200):
        idx = np.concatenate([units[i] for i in ref_rng.integers(0, len(units), size=len(units))])
        expected.append(sps.spearmanr(x[idx], y[idx])[0])
    got: list = []
    est = stats.spearman(x, y, groups=groups, n_boot=200, seed=11, draws_out=got)
    assert np.allclose(got, expected, rtol=0, atol=1e-12)
    assert est.ci == pytest.approx(tuple(np.quantile(expected, [0.025, 0.975])), abs=1e-12)
    assert est.n_groups == len(units)
