"""Cross-signals: how the probe, the implicit reward, the true reward and a value head relate.

    signal_correlations({"probe": p, "true_reward": r, ...}, groups)  Spearman of every pair, CI by prompt
    mean_difference_direction(x, y)   mean activation of high-reward rows minus low-reward rows
    cosine(a, b)                      cosine of two directions

Directions compare only in one basis: a probe on `blocks.L.hook_resid_post` and a value head that
reads `ln_final.hook_out` live in different bases (the final norm divides by each token's
scale and multiplies by its own gain), so the probes stage fits a probe on the value head's own site
for the cosine, and compares the value head's predictions with the probe and the true reward
(Spearman), which compare whatever the basis.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from rewardlab import stats
from rewardlab.errors import InputError


def signal_correlations(signals: dict[str, Sequence[float]], groups: Sequence, n_boot: int = stats.N_BOOT,
                        seed: int = 0) -> dict[str, dict]:
    """{"a~b": Spearman Estimate dict} for each pair of signals (rows grouped by prompt id)."""
    return {f"{a}~{b}": stats.spearman(signals[a], signals[b], groups=groups, n_boot=n_boot, seed=seed).to_dict()
            for a, b in itertools.combinations(signals, 2)}


def mean_difference_direction(x: np.ndarray, y: np.ndarray, quantile: float = 0.5) -> np.ndarray:
    """mean(x | y above the 1-q quantile) - mean(x | y below the q quantile), shape [d] (not normalized).

    quantile 0.5 splits at the median; 0.25 contrasts the top and bottom quarters. When ties leave one
    side empty (a sparse target whose median is its minimum, such as a count of rare words), the rows
    tied at that side's quantile join it: mean(x | y > min) - mean(x | y = min).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not len(y) or y.min() == y.max():
        raise InputError("the target does not vary: no high and low rows to contrast",
                         fix="give records whose target differs")
    q_high, q_low = np.quantile(y, 1 - quantile), np.quantile(y, quantile)
    high, low = y > q_high, y < q_low
    if not low.any():
        low = (y <= q_low) & ~high
    if not high.any():
        high = (y >= q_high) & ~low
    return x[high].mean(0) - x[low].mean(0)


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else float("nan")
