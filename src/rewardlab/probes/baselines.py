"""Baselines a reward probe must beat, and the control task that gives its selectivity.

    length      ridge on the completion's token count alone
    bag_of_words  ridge on word counts of the completion (vocabulary of the training rows)
    control     the same probe fitted to labels shuffled across prompts (Hewitt and Liang's control
                task): it can only memorize, so on held-out prompts it shows what the probe's
                capacity alone buys; selectivity = metric(real labels) - metric(control labels)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rewardlab.probes.linear import fit_ridge
from rewardlab.rewards import words


def length_features(n_tokens: Sequence[int]) -> np.ndarray:
    """[n, 1] completion lengths in tokens."""
    return np.asarray(n_tokens, dtype=np.float64)[:, None]


def bag_of_words(texts: Sequence[str], train_rows: Sequence[int]) -> np.ndarray:
    """[n, V] word counts over the vocabulary seen in `texts[train_rows]` (words as the reward sees them)."""
    vocab = sorted({w for i in train_rows for w in words(texts[i])})
    index = {w: j for j, w in enumerate(vocab)}
    counts = np.zeros((len(texts), len(vocab)))
    for i, text in enumerate(texts):
        for w in words(text):
            if w in index:
                counts[i, index[w]] += 1
    return counts


def control_labels(y: Sequence[float], seed: int = 0) -> np.ndarray:
    """The targets permuted across all rows (hence across prompts) with numpy Generator(seed)."""
    y = np.asarray(y, dtype=np.float64)
    return y[np.random.default_rng(seed).permutation(len(y))]


def baseline_scores(x: np.ndarray, y: np.ndarray, train: np.ndarray, l2: float = 1.0) -> np.ndarray:
    """Scores of all rows from a ridge fitted on the training rows of features x."""
    return fit_ridge(x[train], y[train], l2=l2).predict(x)
