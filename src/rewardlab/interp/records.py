"""Activation records: per-token activations of one feature on a sequence, OpenAI-style.

For each feature: the top-activating sequences (ranked by their max activation) are split into
explanation records and held-out top records (every `stride`-th goes to the held-out set, so both
span the same range), and random sequences (uniformly from the rest) are held out too. Activations
are scaled 0-10 by the max over ALL of the feature's records (not per record: the 2023 SAE paper's code
scaled per example, which made "top" mean "first that fire").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class ActivationRecord:
    tokens: list[str]
    activations: list[float]  # raw feature activation per token
    sequence: int = -1  # index of the source sequence

    def scaled(self, max_activation: float) -> list[float]:
        """Activations on the 0-10 scale of the feature."""
        if max_activation <= 0:
            return [0.0] * len(self.activations)
        return [10.0 * max(a, 0.0) / max_activation for a in self.activations]


@dataclass
class FeatureRecords:
    feature: int
    max_activation: float
    explain: list[ActivationRecord] = field(default_factory=list)  # top-activating, shown to the explainer
    test_top: list[ActivationRecord] = field(default_factory=list)  # held out
    test_random: list[ActivationRecord] = field(default_factory=list)  # held out

    @property
    def test(self) -> list[ActivationRecord]:
        return self.test_top + self.test_random


def build_records(tokens: list[list[str]], feature_acts: list[torch.Tensor], features: list[int],
                  n_explain: int = 20, n_test_top: int = 5, n_test_random: int = 5,
                  seed: int = 0) -> list[FeatureRecords]:
    """tokens[i] (list of T_i token strings) and feature_acts[i] [T_i, n_features] per sequence.

    Returns one FeatureRecords per requested feature (features that never fire get empty records).
    """
    if len(tokens) != len(feature_acts):
        raise ValueError("tokens and feature_acts must have one entry per sequence")
    maxes = torch.stack([a.max(0).values if len(a) else torch.zeros(a.shape[1]) for a in feature_acts])
    rng = np.random.default_rng(seed)
    out = []
    n_top = n_explain + n_test_top
    stride = max(2, n_top // max(n_test_top, 1))
    for feat in features:
        col = maxes[:, feat]
        order = torch.argsort(col, descending=True, stable=True)
        top = [int(i) for i in order[:n_top] if col[i] > 0]
        rest = np.setdiff1d(np.arange(len(tokens)), top)
        rand = rng.choice(rest, size=min(n_test_random, len(rest)), replace=False) if len(rest) else []

        def record(i: int) -> ActivationRecord:
            return ActivationRecord(list(tokens[i]), feature_acts[i][:, feat].float().tolist(), i)

        held = set(top[stride - 1::stride][:n_test_top])
        out.append(FeatureRecords(
            feature=feat, max_activation=float(col.max()) if len(col) else 0.0,
            explain=[record(i) for i in top if i not in held],
            test_top=[record(i) for i in top if i in held],
            test_random=[record(int(i)) for i in rand]))
    return out
