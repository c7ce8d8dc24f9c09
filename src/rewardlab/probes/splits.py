"""Train / validation / test splits grouped by prompt: rows that share a prompt never cross splits.

The original probe project split rows at random, so completions of one prompt sat in train and test
(prompt leakage). Here whole prompts are assigned to a split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rewardlab.errors import InputError


@dataclass(frozen=True)
class Split:
    """Row indices of each part (sorted int arrays)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def grouped_split(groups: Sequence, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0) -> Split:
    """Assign whole groups (prompt ids) to train/val/test in the given fractions of groups.

    Groups are sorted, then permuted with `numpy.random.default_rng(seed)`, so the split depends
    only on the set of prompt ids and the seed, not on row order. Each part gets at least one group.
    """
    groups = np.asarray(groups)
    unique = np.unique(groups)
    if len(unique) < 3:
        raise InputError(f"only {len(unique)} distinct prompts; a grouped split needs at least 3",
                         fix="provide records from more prompts")
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise InputError(f"split fractions {fractions} must be 3 positive numbers summing to 1")
    order = np.random.default_rng(seed).permutation(len(unique))
    n_train = max(1, int(round(fractions[0] * len(unique))))
    n_val = max(1, int(round(fractions[1] * len(unique))))
    n_train = min(n_train, len(unique) - 2)
    n_val = min(n_val, len(unique) - n_train - 1)
    part = np.empty(len(unique), dtype=np.int64)
    part[order[:n_train]] = 0
    part[order[n_train:n_train + n_val]] = 1
    part[order[n_train + n_val:]] = 2
    row_part = part[np.searchsorted(unique, groups)]
    return Split(*(np.flatnonzero(row_part == k) for k in range(3)))
