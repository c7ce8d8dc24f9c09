"""Cross-signals: how the probe, the implicit reward, the true reward and a value head relate.

    signal_correlations({"probe": p, "true_reward": r, ...}, groups)  Spearman of every pair, CI by prompt
    mean_difference_direction(x, y)   mean activation of high-reward rows minus low-reward rows
    stratified_mean_difference(x, label, strata)  the same within strata (e.g. per-token rows,
                                      label = next token's valence, strata = current token)
    project_out(d, a)                 d without its component along a
    token_valences(tokenizer, ids, table)  the utility table's valence of each token id (0 if none)
    cosine(a, b)                      cosine of two directions

Directions compare only in one basis: a probe on `blocks.L.hook_resid_post` and a value head that
reads `ln_final.hook_normalized` live in different bases (the final norm divides by each token's
scale and multiplies by its own gain), so `probes.study` fits a probe on the value head's own site
for the cosine, and compares the value head's predictions with the probe and the true reward
(Spearman), which compare whatever the basis.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from rewardlab import stats


def signal_correlations(signals: dict[str, Sequence[float]], groups: Sequence, n_boot: int = stats.N_BOOT,
                        seed: int = 0) -> dict[str, dict]:
    """{"a~b": Spearman Estimate dict} for each pair of signals (rows grouped by prompt id)."""
    return {f"{a}~{b}": stats.spearman(signals[a], signals[b], groups=groups, n_boot=n_boot, seed=seed).to_dict()
            for a, b in itertools.combinations(signals, 2)}


def mean_difference_direction(x: np.ndarray, y: np.ndarray, quantile: float = 0.5) -> np.ndarray:
    """mean(x | y above the 1-q quantile) - mean(x | y below the q quantile), shape [d] (not normalized).

    quantile 0.5 splits at the median; 0.25 contrasts the top and bottom quarters.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    high, low = y > np.quantile(y, 1 - quantile), y < np.quantile(y, quantile)
    if not high.any() or not low.any():
        raise ValueError("the target does not vary: no high and low rows to contrast")
    return x[high].mean(0) - x[low].mean(0)


def stratified_mean_difference(x: np.ndarray, label: np.ndarray, strata: Sequence | None = None) -> np.ndarray:
    """mean(x | label > 0) - mean(x | label < 0) within each stratum, averaged over strata; [d], not normalized.

    x: [n, d]; label: [n] (its sign picks the side, 0 = neither); strata: [n] (None: one stratum).
    Stratum weights n_pos * n_neg / (n_pos + n_neg); strata lacking either side drop out. With
    per-token rows, label = the valence of the *next* token and strata = the current token id, this
    is the direction that writes a rewarded word next, with what differs between the contexts of
    positive and negative words (which word the model is at) held fixed.
    """
    x, label = np.asarray(x, dtype=np.float64), np.asarray(label, dtype=np.float64)
    strata = np.zeros(len(label), dtype=np.int64) if strata is None else np.asarray(strata)
    total, weight = np.zeros(x.shape[1]), 0.0
    for s in np.unique(strata):
        pos, neg = (strata == s) & (label > 0), (strata == s) & (label < 0)
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        if n_pos and n_neg:
            w = n_pos * n_neg / (n_pos + n_neg)
            total += w * (x[pos].mean(0) - x[neg].mean(0))
            weight += w
    if weight == 0:
        raise ValueError("no stratum has both positive and negative labels: nothing to contrast")
    return total / weight


def project_out(direction, against) -> np.ndarray:
    """`direction` minus its component along `against` (both [d]; a zero `against` leaves it as is)."""
    d, a = np.asarray(direction, dtype=np.float64), np.asarray(against, dtype=np.float64)
    return d - (d @ a) / (a @ a) * a if a @ a > 0 else d


def token_valences(tokenizer, ids: Sequence[int], table: dict[str, float]) -> np.ndarray:
    """[n] valence of each token id: the table's value for the decoded, stripped, lower-cased token, else 0."""
    vocab = {i: table.get(tokenizer.decode([i]).strip().lower(), 0.0) for i in set(int(i) for i in ids)}
    return np.asarray([vocab[int(i)] for i in ids], dtype=np.float64)


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else float("nan")
