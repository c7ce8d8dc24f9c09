"""Scores of a ranked hypothesis against an organism's truth, with bootstrap CIs over seeds and samples.

A hypothesis is a score per token type over the vocabulary (higher: the method says the reward likes
that token more). Against the truth it is scored by:

    auroc            P(score of a planted token > score of another token), ties counting 1/2
                     (the Mann-Whitney U statistic over n_pos * n_neg pairs)
    precision_at_k   fraction of planted tokens among the k top-scored tokens (k = the planted set's
                     size); a tie straddling rank k counts each tied token by the share of the
                     remaining places it would get under a random tie break (the expectation)
    spearman_truth   Spearman rank correlation of the scores with the true per-token score
    pair_accuracy    on minimal pairs (x+, x-, y) differing only in the prompt's tone: the fraction of
                     pairs whose estimated reward difference r(x+, y) - r(x-, y) has the sign of y's
                     valence, a difference of exactly 0 counting 1/2 (a prompt-blind method scores 0.5)

`over_seeds` gives the mean over organism seeds with a two-level percentile bootstrap: each draw
resamples the seeds, then, within each drawn seed, the samples the method read (the hypothesis's own
replicate). The reported interval is widened to contain the full-data value where the percentile
interval misses it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from rewardlab.probes.metrics import auc_score
from rewardlab.stats import N_BOOT, Estimate, spearman_r


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve of `scores` for the `positive` tokens (`probes.metrics.auc_score`: average
    ranks, ties count 1/2); nan without both classes."""
    return auc_score(np.asarray(positive, dtype=bool), np.asarray(scores, dtype=np.float64))


def precision_at_k(scores: Sequence[float], positive: Sequence[bool], k: int | None = None) -> float:
    """Expected fraction of positives among the `k` (default: the number of positives) top-scored tokens
    under a random tie break."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    k = int(positive.sum()) if k is None else k
    if k <= 0:
        return float("nan")
    threshold = np.sort(scores)[::-1][k - 1]
    above, tied = scores > threshold, scores == threshold
    places = k - int(above.sum())  # places left for the tokens tied at the threshold
    hits = positive[above].sum() + positive[tied].sum() * places / tied.sum()
    return float(hits / k)


def spearman_truth(scores: Sequence[float], truth: Sequence[float]) -> float:
    """Spearman's rho of the scores with the true per-token scores (nan when either is constant)."""
    return spearman_r(np.asarray(scores, dtype=np.float64), np.asarray(truth, dtype=np.float64))


def pair_accuracy(differences: Sequence[float], expected_sign: Sequence[float]) -> float:
    """Fraction of pairs whose difference has the expected sign; a zero difference counts 1/2."""
    d, e = np.sign(np.asarray(differences, dtype=np.float64)), np.sign(np.asarray(expected_sign, dtype=np.float64))
    if len(d) == 0:
        return float("nan")
    return float(np.mean(np.where(d == 0, 0.5, (d == e).astype(np.float64))))


def contain(est: Estimate) -> Estimate:
    """`est` with its interval widened to contain its value where the percentile interval misses it (a
    full-data value can fall outside its resamples' percentiles: resampling loses distinct samples)."""
    lo, hi = est.ci
    if not (np.isfinite(est.value) and np.isfinite(lo) and np.isfinite(hi)):
        return est
    return Estimate(est.value, (float(min(lo, est.value)), float(max(hi, est.value))), est.n, est.n_groups)


SeedMetric = Callable[[np.random.Generator | None], float]


def over_seeds(per_seed: Sequence[SeedMetric], n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95
               ) -> Estimate:
    """Mean over seeds of a metric, with a bootstrap CI over seeds and, within each, samples.

    `per_seed[i](None)` is the metric on seed i's full data; `per_seed[i](rng)` on one bootstrap
    replicate of its samples. n = the number of seeds."""
    if not per_seed:
        raise ValueError("over_seeds of no seeds")
    values = np.array([f(None) for f in per_seed], dtype=np.float64)
    value = float(np.mean(values))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        picked = rng.integers(0, len(per_seed), size=len(per_seed))
        draws.append(np.mean([per_seed[i](rng) for i in picked]))
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if not len(draws) or not np.isfinite(value):
        return Estimate(value, (float("nan"), float("nan")), len(per_seed))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(draws, [alpha, 1 - alpha])
    return contain(Estimate(value, (float(lo), float(hi)), len(per_seed)))
