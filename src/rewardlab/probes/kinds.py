"""Three kinds of reward probe on one feature space: their directions, and each one's score on the
others' tasks.

    rating         ridge regression of each completion's true reward (`linear.fit_ridge`)
    winner_loser   logistic classification of a preference pair's completions: chosen 1, rejected 0
                   (`linear.fit_logistic`, with intercept)
    bradley_terry  P(chosen beats rejected) = sigmoid(w . (a_chosen - a_rejected)), no intercept
                   (`linear.fit_bradley_terry`)

Every probe gives each completion a score; each is scored on the three tasks on held-out prompts:

    rating         Spearman of the score with the true reward of the rated completions
    winner_loser   ROC AUC of the score for chosen (1) vs rejected (0) over the pairs' completions
                   (ties count 1/2, `metrics.auc_score`)
    pair           the share of pairs whose chosen completion scores strictly higher (ties lose)

A feature space (`KindData`) holds rated rows (features, true reward, prompt id) and pairs (features
of chosen and rejected, prompt id): a model's activations at one site and position, or the text's
bag of words (the baseline rows a probe must beat). One grouped split over the prompts of both
(`kind_split`) keeps every prompt in one part for both data sets. Selection sees validation prompts
only: each probe's L2 penalty by its own task's validation score, the site by the mean over the
three probes of that score on a correlation's scale (Spearman, 2 AUC - 1, 2 accuracy - 1). The score
matrix's CIs resample test prompts with the fitted probes fixed; the cosines' CIs refit the three
probes (penalties fixed) on bootstrap resamples of the training prompts (`direction_cosines`), centred
on the full-data cosine.
Estimation noise pulls a cosine of fitted directions toward 0, and a refit on a resample adds that
noise again, so the refits' interval sits low around the full-data cosine; `split_half_cosines` gives
the scale: how far apart two fits of the same kind on disjoint halves of the prompts are.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rewardlab import stats
from rewardlab.errors import InputError
from rewardlab.probes.baselines import bag_of_words
from rewardlab.probes.cross import cosine
from rewardlab.probes.linear import Probe, fit_bradley_terry, fit_logistic, fit_ridge
from rewardlab.probes.metrics import auc_score
from rewardlab.probes.splits import Split, grouped_split
from rewardlab.stats import Estimate, spearman_r

KINDS = ("rating", "winner_loser", "bradley_terry")
TASKS = ("rating", "winner_loser", "pair")
OWN_TASK = {"rating": "rating", "winner_loser": "winner_loser", "bradley_terry": "pair"}


@dataclass
class KindData:
    """Rated completions and preference pairs in one feature space of width d."""

    x: np.ndarray                  # [n_rows, d] rated completions
    y: np.ndarray                  # [n_rows] their true reward
    groups: np.ndarray             # [n_rows] prompt ids
    chosen: np.ndarray             # [n_pairs, d]
    rejected: np.ndarray           # [n_pairs, d]
    pair_groups: np.ndarray        # [n_pairs] prompt ids


@dataclass(frozen=True)
class KindSplit:
    """Row indices of the rated rows and of the pairs in each part, from one split of their prompts."""

    rows: Split
    pairs: Split


def kind_split(groups: Sequence, pair_groups: Sequence, fractions=(0.6, 0.2, 0.2), seed: int = 0) -> KindSplit:
    """`grouped_split` of the union of both data sets' prompts; InputError when a part lacks rows or pairs."""
    groups, pair_groups = np.asarray(groups), np.asarray(pair_groups)
    n = len(groups)
    joint = grouped_split(np.concatenate([groups, pair_groups]), fractions, seed)
    parts = (joint.train, joint.val, joint.test)
    out = KindSplit(Split(*(p[p < n] for p in parts)), Split(*(p[p >= n] - n for p in parts)))
    for name, split in (("rated completions", out.rows), ("pairs", out.pairs)):
        if min(split.sizes().values()) == 0:
            raise InputError(f"the {name} fall in too few prompts for a train/validation/test split "
                             f"({split.sizes()})", fix="give rated rows and pairs from more shared prompts")
    return out


def fit_kind(kind: str, data: KindData, rows: np.ndarray, pairs: np.ndarray, l2: float) -> Probe:
    """The `kind` probe fitted on rated rows `rows` (rating) or pairs `pairs` (the other two)."""
    if kind == "rating":
        return fit_ridge(data.x[rows], data.y[rows], l2=l2)
    if kind == "winner_loser":
        x = np.vstack([data.chosen[pairs], data.rejected[pairs]])
        return fit_logistic(x, np.r_[np.ones(len(pairs)), np.zeros(len(pairs))], l2=l2)
    if kind == "bradley_terry":
        return fit_bradley_terry(data.chosen[pairs], data.rejected[pairs], l2=l2)
    raise InputError(f"unknown probe kind {kind!r}", fix=f"use one of {', '.join(KINDS)}")


def pair_accuracy(score_chosen, score_rejected) -> float:
    """The share of pairs whose chosen completion scores strictly higher (a tie counts wrong)."""
    return float(np.mean(np.asarray(score_chosen) > np.asarray(score_rejected)))


def _task_arrays(task: str, probe: Probe, data: KindData, rows: np.ndarray, pairs: np.ndarray):
    """(statistic, arrays, groups) of one task on the given rows or pairs."""
    if task == "rating":
        return spearman_r, (data.y[rows], probe.predict(data.x[rows])), data.groups[rows]
    sc, sr = probe.predict(data.chosen[pairs]), probe.predict(data.rejected[pairs])
    if task == "winner_loser":
        labels = np.r_[np.ones(len(pairs)), np.zeros(len(pairs))]
        return auc_score, (labels, np.r_[sc, sr]), np.r_[data.pair_groups[pairs], data.pair_groups[pairs]]
    if task == "pair":
        return pair_accuracy, (sc, sr), data.pair_groups[pairs]
    raise InputError(f"unknown task {task!r}", fix=f"use one of {', '.join(TASKS)}")


def task_value(task: str, probe: Probe, data: KindData, rows: np.ndarray, pairs: np.ndarray) -> float:
    """The probe's score on `task` over the given rated rows (rating) or pairs (the others)."""
    statistic, arrays, _ = _task_arrays(task, probe, data, rows, pairs)
    return float(statistic(*arrays))


def task_estimate(task: str, probe: Probe, data: KindData, rows: np.ndarray, pairs: np.ndarray,
                  n_boot: int = stats.N_BOOT, seed: int = 0) -> Estimate:
    """`task_value` with a percentile bootstrap CI that resamples prompts (the probe fixed)."""
    statistic, arrays, groups = _task_arrays(task, probe, data, rows, pairs)
    return stats.bootstrap(statistic, *arrays, groups=groups, n_boot=n_boot, seed=seed)


def correlation_scale(task: str, value: float) -> float:
    """A task's score on [-1, 1] with 0 for chance: Spearman as is, AUC and accuracy as 2 v - 1."""
    return value if task == "rating" else 2 * value - 1


def select_l2(kind: str, data: KindData, split: KindSplit, l2_grid: Sequence[float]) -> tuple[float, float]:
    """(penalty, validation score on its own task) of the grid's best, fitted on training prompts;
    the first of equal scores wins."""
    best = None
    for l2 in l2_grid:
        probe = fit_kind(kind, data, split.rows.train, split.pairs.train, l2)
        val = task_value(OWN_TASK[kind], probe, data, split.rows.val, split.pairs.val)
        if best is None or (np.isfinite(val) and not val <= best[1]):
            best = (float(l2), val)
    return best


def select_site(datas: dict[str, KindData], split: KindSplit, l2_grid: Sequence[float]
                ) -> tuple[str, dict[str, float], dict[str, dict[str, float]]]:
    """The site (key of `datas`) with the highest mean own-task validation score of the three probes
    (`correlation_scale`), those means per site, and per site each kind's {"l2", "val"}."""
    means, chosen = {}, {}
    for site, data in datas.items():
        chosen[site] = {}
        for kind in KINDS:
            l2, val = select_l2(kind, data, split, l2_grid)
            chosen[site][kind] = {"l2": l2, "val": val}
        means[site] = float(np.mean([correlation_scale(OWN_TASK[k], chosen[site][k]["val"]) for k in KINDS]))
    finite = {s: v for s, v in means.items() if np.isfinite(v)}
    if not finite:
        raise InputError("no site gives the probes a finite validation score", fix="give rated rows whose "
                         "reward varies and pairs in the validation prompts")
    return max(finite, key=finite.get), means, chosen


def score_matrix(fitted: dict[str, tuple[Probe, KindData]], split: KindSplit, n_boot: int = stats.N_BOOT,
                 seed: int = 0) -> dict[str, dict[str, Estimate]]:
    """{row name: {task: test Estimate}} for each fitted probe (with the features it reads)."""
    return {name: {task: task_estimate(task, probe, data, split.rows.test, split.pairs.test, n_boot, seed)
                   for task in TASKS} for name, (probe, data) in fitted.items()}


def paired_difference(task: str, a: tuple[Probe, KindData], b: tuple[Probe, KindData], split: KindSplit,
                      n_boot: int = stats.N_BOOT, seed: int = 0) -> Estimate:
    """Test score on `task` of probe a minus probe b (each with the features it reads), with a paired
    bootstrap CI: both on the same resampled test prompts."""
    statistic, arrays_a, groups = _task_arrays(task, *a, split.rows.test, split.pairs.test)
    _, arrays_b, _ = _task_arrays(task, *b, split.rows.test, split.pairs.test)
    k = len(arrays_a)
    return stats.bootstrap(lambda *arr: statistic(*arr[:k]) - statistic(*arr[k:]), *arrays_a, *arrays_b,
                           groups=groups, n_boot=n_boot, seed=seed)


def _prompt_rows(groups: np.ndarray, idx: np.ndarray) -> dict:
    """{prompt id: the entries of `idx` from that prompt}."""
    out: dict = {}
    for i in idx:
        out.setdefault(groups[i], []).append(i)
    return out


def direction_cosines(data: KindData, split: KindSplit, l2: dict[str, float], n_refit: int = 100, seed: int = 0,
                      level: float = 0.95) -> dict[str, Estimate]:
    """{"a~b": cosine of the directions (`Probe.direction`, raw basis) of kinds a and b fitted on the
    training prompts}, with a CI from refitting all three (penalties `l2` fixed) on `n_refit` resamples
    with replacement of the training prompts (their rated rows and pairs): the refits' 2.5 and 97.5
    percentiles moved by (full-data cosine - the refits' median). A refit adds estimation noise to
    directions that already carry it, which pulls its cosine toward 0 (module docstring), so the refits'
    raw percentiles can lie wholly on one side of the full-data cosine; the shift keeps their spread
    and centres it on the estimate (bias-corrected percentile interval, clipped to [-1, 1];
    `split_half_cosines` measures the attenuation itself)."""
    def cosines(rows: np.ndarray, pairs: np.ndarray) -> dict[str, float]:
        directions = {k: fit_kind(k, data, rows, pairs, l2[k]).direction() for k in KINDS}
        return {f"{a}~{b}": cosine(directions[a], directions[b]) for a, b in itertools.combinations(KINDS, 2)}

    train_rows, train_pairs = split.rows.train, split.pairs.train
    value = cosines(train_rows, train_pairs)
    by_row, by_pair = _prompt_rows(data.groups, train_rows), _prompt_rows(data.pair_groups, train_pairs)
    prompts = sorted(set(by_row) | set(by_pair))
    rng = np.random.default_rng(seed)
    draws = {k: [] for k in value}
    for _ in range(n_refit):
        picked = [prompts[i] for i in rng.integers(0, len(prompts), size=len(prompts))]
        rows = np.asarray([i for p in picked for i in by_row.get(p, [])], dtype=np.int64)
        pairs = np.asarray([i for p in picked for i in by_pair.get(p, [])], dtype=np.int64)
        if len(rows) < 2 or len(pairs) < 1:
            continue
        for k, v in cosines(rows, pairs).items():
            draws[k].append(v)
    alpha = (1 - level) / 2
    n = len(train_rows) + len(train_pairs)

    def centred(v: float, refits: list[float]) -> tuple[float, float]:
        if not refits:
            return float("nan"), float("nan")
        lo, median, hi = np.quantile(refits, [alpha, 0.5, 1 - alpha])
        return float(max(-1.0, lo - median + v)), float(min(1.0, hi - median + v))  # a cosine stays in [-1, 1]

    return {k: Estimate(v, centred(v, draws[k]), n, len(prompts)) for k, v in value.items()}


def split_half_cosines(data: KindData, split: KindSplit, l2: dict[str, float], n_splits: int = 100, seed: int = 0,
                       level: float = 0.95) -> dict[str, dict[str, Estimate]]:
    """Directions fitted on two disjoint random halves of the training prompts, `n_splits` times:

        self           per kind "k~k": cosine of its two halves' directions (the ceiling that estimation
                       noise at half the data puts on any cosine)
        across         per pair of kinds "a~b": mean of cos(a on one half, b on the other) over both orders
        disattenuated  across / sqrt(self_a * self_b) per halving (nan where a self cosine is <= 0)

    Value: the mean over halvings; interval: the halvings' percentiles (their spread, not a bootstrap)."""
    by_row, by_pair = _prompt_rows(data.groups, split.rows.train), _prompt_rows(data.pair_groups, split.pairs.train)
    prompts = sorted(set(by_row) | set(by_pair))
    rng = np.random.default_rng(seed)
    draws: dict[str, dict[str, list[float]]] = {"self": {}, "across": {}, "disattenuated": {}}
    for _ in range(n_splits):
        order = rng.permutation(len(prompts))
        parts = [[np.asarray([i for j in part for i in rows_of.get(prompts[j], [])], dtype=np.int64)
                  for rows_of in (by_row, by_pair)] for part in (order[:len(order) // 2], order[len(order) // 2:])]
        if any(len(rows) < 2 or len(pairs) < 1 for rows, pairs in parts):
            continue
        halves = [{k: fit_kind(k, data, rows, pairs, l2[k]).direction() for k in KINDS} for rows, pairs in parts]
        own = {k: cosine(halves[0][k], halves[1][k]) for k in KINDS}
        for k in KINDS:
            draws["self"].setdefault(f"{k}~{k}", []).append(own[k])
        for a, b in itertools.combinations(KINDS, 2):
            across = (cosine(halves[0][a], halves[1][b]) + cosine(halves[1][a], halves[0][b])) / 2
            draws["across"].setdefault(f"{a}~{b}", []).append(across)
            ceiling = own[a] * own[b]
            draws["disattenuated"].setdefault(f"{a}~{b}", []).append(
                across / np.sqrt(ceiling) if ceiling > 0 and own[a] > 0 else float("nan"))
    alpha = (1 - level) / 2
    n = len(split.rows.train) + len(split.pairs.train)

    def estimate(values: list[float]) -> Estimate:
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if not len(v):
            return Estimate(float("nan"), (float("nan"), float("nan")), n, len(prompts))
        lo, hi = np.quantile(v, [alpha, 1 - alpha])
        return Estimate(float(v.mean()), (float(lo), float(hi)), n, len(prompts))

    return {part: {k: estimate(v) for k, v in values.items()} for part, values in draws.items()}


def bag_of_words_data(texts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str], data: KindData,
                      split: KindSplit, max_vocab: int = 512) -> KindData:
    """`data` with its features replaced by word counts of the texts (`baselines.bag_of_words`), over
    the `max_vocab` words most frequent in the training rows and pairs (ties: alphabetical order)."""
    all_texts = list(texts) + list(chosen) + list(rejected)
    n, m = len(texts), len(chosen)
    train = np.r_[split.rows.train, n + split.pairs.train, n + m + split.pairs.train]
    counts = bag_of_words(all_texts, train)
    keep = np.sort(np.argsort(-counts[train].sum(0), kind="stable")[:max_vocab])
    counts = counts[:, keep]
    return KindData(counts[:n], data.y, data.groups, counts[n:n + m], counts[n + m:], data.pair_groups)


def compare_kinds(datas: dict[str, KindData], words: KindData, split: KindSplit, l2_grid: Sequence[float],
                  n_boot: int = stats.N_BOOT, n_refit: int = 100, seed: int = 0) -> dict:
    """The whole comparison: the site chosen on validation, each probe's penalty, the cosines of the
    three directions there (and at half the training prompts, `split_half_cosines`), the score matrix of the three probes and of the same three fitted on
    the bag of words `words` (rows "bag_of_words:KIND") on the test prompts, and per task its own
    probe minus the bag-of-words probe of that kind (`paired_difference`)."""
    site, site_scores, chosen = select_site(datas, split, l2_grid)
    data = datas[site]
    fitted = {k: (fit_kind(k, data, split.rows.train, split.pairs.train, chosen[site][k]["l2"]), data)
              for k in KINDS}
    words_l2 = {k: select_l2(k, words, split, l2_grid)[0] for k in KINDS}
    fitted.update({f"bag_of_words:{k}": (fit_kind(k, words, split.rows.train, split.pairs.train, words_l2[k]), words)
                   for k in KINDS})
    return {"site": site, "site_val_scores": site_scores, "l2": {k: chosen[site][k]["l2"] for k in KINDS},
            "val": {k: chosen[site][k]["val"] for k in KINDS}, "bag_of_words_l2": words_l2,
            "cosines": direction_cosines(data, split, {k: chosen[site][k]["l2"] for k in KINDS}, n_refit, seed),
            "split_half": split_half_cosines(data, split, {k: chosen[site][k]["l2"] for k in KINDS}, n_refit, seed),
            "scores": score_matrix(fitted, split, n_boot, seed),
            "versus_text": {task: paired_difference(task, fitted[k], fitted[f"bag_of_words:{k}"], split, n_boot, seed)
                            for k, task in OWN_TASK.items()},
            "n": {"rows": split.rows.sizes(), "pairs": split.pairs.sizes()}}
