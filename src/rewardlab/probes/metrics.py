"""Probe metrics, each as an `Estimate` with a bootstrap 95% CI that resamples whole prompts.

    r2                  1 - SS_res / SS_tot (as sklearn.metrics.r2_score)
    pearson, spearman   over all rows
    spearman_within     mean over prompts of the Spearman correlation inside each prompt (prompts
                        whose targets are constant are skipped; a score constant inside a prompt,
                        e.g. a prompt-only probe, counts 0: it ranks nothing)
    pairwise_accuracy   over pairs of completions of the same prompt with different targets: the
                        share ordered correctly by the score (ties in the score lose, as RewardBench)
    auc                 ROC AUC of the score for the binary label (the target itself when it has two
                        values, else target > median target); ties count one half (sklearn)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rewardlab import stats
from rewardlab.stats import Estimate

METRICS = ("r2", "pearson", "spearman", "spearman_within", "pairwise_accuracy", "auc")


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return float("nan") if ss_tot == 0 else 1.0 - float(np.sum((y - pred) ** 2)) / ss_tot


def auc_score(labels: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC via the Mann-Whitney statistic on average ranks (ties count 1/2)."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.average_ranks(score)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_labels(y: np.ndarray) -> np.ndarray:
    """The target itself if it takes two values, else y > median(y)."""
    values = np.unique(y)
    if len(values) == 2:
        return (y == values[1]).astype(np.float64)
    return (y > np.median(y)).astype(np.float64)


def within_prompt_spearman_values(y: np.ndarray, score: np.ndarray, groups: Sequence) -> np.ndarray:
    """One Spearman correlation per prompt with non-constant targets (0 when the score is constant)."""
    out = []
    for idx in stats.group_rows(groups, len(y)):
        if len(idx) < 2 or np.ptp(y[idx]) == 0:
            continue
        if np.ptp(score[idx]) == 0:
            out.append(0.0)
            continue
        out.append(stats.spearman_r(y[idx], score[idx]))
    return np.asarray(out, dtype=np.float64)


def pairwise_counts(y: np.ndarray, score: np.ndarray, groups: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt: (correctly ordered pairs, pairs with different targets); score ties are wrong."""
    correct, total = [], []
    for idx in stats.group_rows(groups, len(y)):
        dy = y[idx][:, None] - y[idx][None, :]
        ds = score[idx][:, None] - score[idx][None, :]
        upper = np.triu(np.ones_like(dy, dtype=bool), k=1) & (dy != 0)
        correct.append(float(np.sum((dy * ds > 0) & upper)))
        total.append(float(np.sum(upper)))
    return np.asarray(correct), np.asarray(total)


def _ratio(c: np.ndarray, t: np.ndarray) -> float:
    return float(c.sum() / t.sum()) if t.sum() > 0 else float("nan")


def evaluate(y, score, groups: Sequence, n_boot: int = stats.N_BOOT, seed: int = 0) -> dict[str, Estimate]:
    """All metrics of `score` against target `y` (rows grouped by prompt id `groups`)."""
    y = np.asarray(y, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    kw = dict(n_boot=n_boot, seed=seed)
    out = {
        "r2": stats.bootstrap(r2_score, y, score, groups=groups, **kw),
        "pearson": stats.pearson(y, score, groups=groups, **kw),
        "spearman": stats.spearman(y, score, groups=groups, **kw),
    }
    within = within_prompt_spearman_values(y, score, groups)
    out["spearman_within"] = (stats.mean(within, **kw) if len(within)
                              else Estimate(float("nan"), (float("nan"), float("nan")), 0))
    correct, total = pairwise_counts(y, score, groups)
    keep = total > 0
    out["pairwise_accuracy"] = (stats.bootstrap(_ratio, correct[keep], total[keep], **kw) if keep.any()
                                else Estimate(float("nan"), (float("nan"), float("nan")), 0))
    out["auc"] = stats.bootstrap(auc_score, binary_labels(y), score, groups=groups, **kw)
    return out


def as_dict(metrics: dict[str, Estimate]) -> dict[str, dict]:
    return {k: v.to_dict() for k, v in metrics.items()}
