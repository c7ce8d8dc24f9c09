"""Comparing dictionaries: max cosine similarity (MCS), its mean (MMCS), and one-to-one matching.

A dictionary is a [n_features, d] matrix of feature directions (an SAE's decoder rows, W_dec; the
seed calls them decoder columns in the [d, n] layout). For each feature of D its MCS is the highest
cosine with any feature of D'; MMCS(D, D') is their mean (not symmetric). The one-to-one variant
pairs features with the Hungarian algorithm (scipy linear_sum_assignment, maximizing total cosine),
so no feature of D' is used twice; its mean runs over the min(|D|, |D'|) matched pairs.
Baselines: random unit dictionaries of the same shapes, and the same-size SAE trained with another seed.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

SHARED_THRESHOLD = 0.9  # cosine above which two features count as the same


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[n_a, d], [n_b, d] -> cosine similarities [n_a, n_b]"""
    a = a.float() / a.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = b.float() / b.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return a @ b.T


def compare_dictionaries(a: torch.Tensor, b: torch.Tensor, threshold: float = SHARED_THRESHOLD) -> dict:
    """MCS/MMCS of dictionary `a` against `b`, max and one-to-one, with matched index pairs.

    Returns mmcs_max, mmcs_one_to_one, mcs_max [n_a], argmax [n_a] (index into b), pairs (list of
    [i_a, i_b, cosine] from the Hungarian matching, sorted by decreasing cosine), n_shared and
    shared_fraction (one-to-one pairs above `threshold`, over n_a).
    """
    cos = cosine_matrix(a, b)
    mcs, argmax = cos.max(dim=1)
    rows, cols = linear_sum_assignment(cos.numpy(), maximize=True)
    matched = cos.numpy()[rows, cols]
    order = np.argsort(-matched)
    pairs = [[int(rows[i]), int(cols[i]), float(matched[i])] for i in order]
    n_shared = int((matched > threshold).sum())
    return {"n_a": len(a), "n_b": len(b), "mmcs_max": float(mcs.mean()),
            "mmcs_one_to_one": float(matched.mean()), "mcs_max": mcs.tolist(), "argmax": argmax.tolist(),
            "pairs": pairs, "threshold": threshold, "n_shared": n_shared, "shared_fraction": n_shared / len(a)}


def random_dictionary(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """n random unit vectors in R^d (isotropic)."""
    w = torch.randn(n, d, generator=generator)
    return w / w.norm(dim=1, keepdim=True)


def random_baseline(n_a: int, n_b: int, d: int, seed: int = 0, threshold: float = SHARED_THRESHOLD) -> dict:
    """compare_dictionaries on random unit dictionaries of the given shapes (pairs dropped)."""
    gen = torch.Generator().manual_seed(seed)
    out = compare_dictionaries(random_dictionary(n_a, d, gen), random_dictionary(n_b, d, gen), threshold)
    return summary(out)


def summary(result: dict) -> dict:
    """The scalar part of a compare_dictionaries result (no per-feature lists)."""
    return {k: v for k, v in result.items() if k not in ("mcs_max", "argmax", "pairs")}
