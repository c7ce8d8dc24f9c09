"""Statistics with error bars: every headline number is an `Estimate` (value, bootstrap 95% CI, n).

When rows share a prompt, pass `groups` (one prompt id per row): the bootstrap then resamples whole
prompts, not rows, so the interval is not made falsely narrow by correlated rows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

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


def group_rows(groups: Sequence | None, n: int) -> list[np.ndarray]:
    """Row indices of each resampling unit, in order of first sorted group id: one per row when `groups`
    is None, else one per distinct group (rows in their original order within it)."""
    if groups is None:
        return [np.array([i]) for i in range(n)]
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} rows")
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse))[:-1]
    return np.split(order, bounds)


class _GroupDraw:
    """Row indices of one bootstrap draw of whole groups: the rows of each picked unit, concatenated in
    the order picked (the same array as `np.concatenate([units[i] for i in picked])`, without the loop)."""

    def __init__(self, units: list[np.ndarray]):
        self.rows = np.concatenate(units) if units else np.zeros(0, dtype=np.int64)
        self.sizes = np.array([len(u) for u in units], dtype=np.int64)
        self.starts = np.cumsum(self.sizes) - self.sizes  # where each unit's rows begin in `rows`

    def __call__(self, picked: np.ndarray) -> np.ndarray:
        sizes = self.sizes[picked]
        out_starts = np.cumsum(sizes) - sizes  # where each picked unit's rows begin in the draw
        offsets = np.arange(sizes.sum()) + np.repeat(self.starts[picked] - out_starts, sizes)
        return self.rows[offsets]


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
    units = group_rows(groups, n)
    draw_rows = _GroupDraw(units) if groups is not None else None
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        picked = rng.integers(0, len(units), size=len(units))
        idx = draw_rows(picked) if draw_rows is not None else picked
        draws.append(statistic(*[a[idx] for a in arrays]))
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if draws_out is not None:
        draws_out.extend(draws.tolist())
    alpha = (1 - level) / 2
    lo, hi = (np.quantile(draws, [alpha, 1 - alpha]) if len(draws) else (np.nan, np.nan))
    return Estimate(value, (float(lo), float(hi)), n, None if groups is None else len(units))


def average_ranks(a) -> np.ndarray:
    """Ranks 1..n of a 1-D array [n] as float64, tied values sharing the mean of their ranks (scipy's
    `rankdata(method="average")`, the same numbers); all nan when any value is nan."""
    a = np.asarray(a)
    n = len(a)
    order = np.argsort(a, kind="stable")
    ordered = a[order]
    if n and ordered.dtype.kind == "f" and np.isnan(ordered[-1]):  # argsort puts nan last
        return np.full(n, np.nan)
    new_run = np.empty(n + 1, dtype=bool)  # sorted position i starts a run of ties; position n closes the last
    new_run[0], new_run[n:] = True, True
    np.not_equal(ordered[1:], ordered[:-1], out=new_run[1:n])
    bounds = np.flatnonzero(new_run)
    run_ranks = 0.5 * (bounds[:-1] + bounds[1:] + 1)  # a run at sorted positions s..e-1 holds ranks s+1..e
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, np.diff(bounds))
    return ranks


def _r_of_centered(dx: np.ndarray, dy: np.ndarray) -> float:
    """Pearson's r of two centred arrays; nan when either is all zeros."""
    sxx, syy = float(dx @ dx), float(dy @ dy)
    if sxx == 0 or syy == 0:
        return float("nan")
    r = float(dx @ dy) / (math.sqrt(sxx) * math.sqrt(syy))
    return r if not (r > 1.0 or r < -1.0) else math.copysign(1.0, r)  # rounding can step past +-1; nan passes


def pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r of two 1-D arrays; nan when either is constant (or has fewer than two values)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or x.min() == x.max() or y.min() == y.max():
        return float("nan")
    return _r_of_centered(x - x.mean(), y - y.mean())


def spearman_r(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (Pearson's r of average ranks); nan when either is constant."""
    centre = (len(x) + 1) / 2  # the mean of average ranks 1..n, exactly: centring is exact, constant ranks give 0
    return _r_of_centered(average_ranks(x) - centre, average_ranks(y) - centre)


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
