"""Statistics with error bars: every headline number is an `Estimate` (value, bootstrap 95% CI, n).

When rows share a prompt, pass `groups` (one prompt id per row): the bootstrap then resamples whole
prompts, not rows, so the interval is not made falsely narrow by correlated rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats as sps

N_BOOT = 1000


@dataclass(frozen=True)
class Estimate:
    """A statistic with its percentile-bootstrap confidence interval and the n it rests on."""

    value: float
    ci: tuple[float, float]
    n: int
    n_groups: int | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ci"] = list(self.ci)
        if self.n_groups is None:
            del d["n_groups"]
        return d

    def __str__(self) -> str:
        return describe(self.to_dict())


def describe(estimate: dict, digits: int = 3) -> str:
    """An estimate dict (`Estimate.to_dict`) as text: "value [lo, hi] (n=N)", or "(n=N, G prompts)"."""
    value, (lo, hi) = estimate["value"], estimate["ci"]
    groups = f", {estimate['n_groups']} prompts" if estimate.get("n_groups") is not None else ""
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}] (n={estimate['n']}{groups})"


def _group_index(groups: Sequence | None, n: int) -> list[np.ndarray]:
    """Row indices of each resampling unit: one per row, or one per group."""
    if groups is None:
        return [np.array([i]) for i in range(n)]
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} rows")
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse))[:-1]
    return np.split(order, bounds)


def bootstrap(
    statistic: Callable[..., float],
    *arrays: Sequence[float],
    groups: Sequence | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
    draws_out: list | None = None,
) -> Estimate:
    """`statistic(*arrays)` with a percentile bootstrap CI, resampling rows or whole groups. `draws_out`,
    when given, receives the finite bootstrap draws (for a CI that pools them with other sources)."""
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("all arrays must have the same length")
    value = float(statistic(*arrays))
    units = _group_index(groups, n)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        picked = rng.integers(0, len(units), size=len(units))
        idx = np.concatenate([units[i] for i in picked]) if groups is not None else picked
        draws.append(statistic(*[a[idx] for a in arrays]))
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if draws_out is not None:
        draws_out.extend(draws.tolist())
    alpha = (1 - level) / 2
    lo, hi = (np.quantile(draws, [alpha, 1 - alpha]) if len(draws) else (np.nan, np.nan))
    return Estimate(value, (float(lo), float(hi)), n, None if groups is None else len(units))


def pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r of two arrays; nan when either is constant."""
    if np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def spearman_r(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (Pearson's r of average ranks); nan when either is constant."""
    return pearson_r(sps.rankdata(x), sps.rankdata(y))


def pearson(x, y, groups=None, **kw) -> Estimate:
    """Pearson correlation with a bootstrap CI."""
    return bootstrap(pearson_r, x, y, groups=groups, **kw)


def spearman(x, y, groups=None, **kw) -> Estimate:
    """Spearman rank correlation (Pearson on average ranks, as scipy) with a bootstrap CI."""
    return bootstrap(spearman_r, x, y, groups=groups, **kw)


def mean(x, groups=None, **kw) -> Estimate:
    """Mean with a bootstrap CI."""
    return bootstrap(np.mean, x, groups=groups, **kw)


def mean_difference(a, b, seed: int = 0, n_boot: int = N_BOOT, level: float = 0.95) -> Estimate:
    """mean(a) - mean(b) for two independent samples, each resampled on its own."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = [rng.choice(a, len(a)).mean() - rng.choice(b, len(b)).mean() for _ in range(n_boot)]
    alpha = (1 - level) / 2
    lo, hi = np.quantile(draws, [alpha, 1 - alpha])
    return Estimate(float(a.mean() - b.mean()), (float(lo), float(hi)), len(a) + len(b))
