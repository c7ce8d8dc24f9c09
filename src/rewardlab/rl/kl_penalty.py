"""KL divergence to the frozen reference: per-token estimators and the adaptive coefficient.

Per-token estimators (Schulman, "Approximating KL divergence"), with `logr = logp_ref - logp` at the
sampled token, whose expectations under the policy are KL(pi || ref):

    k1 = -logr                      unbiased, high variance, can be negative
    k2 = logr**2 / 2                biased, low variance, >= 0
    k3 = (exp(logr) - 1) - logr     unbiased, low variance, >= 0

and the exact full-vocabulary values at each position:

    exact          KL(pi || ref) = sum_v pi(v) (log pi(v) - log ref(v))
    exact_reverse  KL(ref || pi) = sum_v ref(v) (log ref(v) - log pi(v))

Summing a per-token value over the completion tokens of a sample gives that sample's KL in nats.
"""

from __future__ import annotations

import torch

from rewardlab.rl.config import KL_ESTIMATORS


def exact_kl(logp_all: torch.Tensor, logq_all: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last (vocabulary) axis from log-probabilities [..., V] -> [...] nats.

    Tokens with p = 0 contribute nothing; tokens with p > 0 and q = 0 make it +inf, as they should.
    """
    p = logp_all.exp()
    support = p > 0  # select before multiplying: 0 * -inf would poison the gradient with nan
    zero = torch.zeros_like(p)
    return (p * (torch.where(support, logp_all, zero) - torch.where(support, logq_all, zero))).sum(-1)


def kl_per_token(estimator: str, logp: torch.Tensor, logp_ref: torch.Tensor,
                 logp_all: torch.Tensor | None = None, logp_ref_all: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate [B, T] (exact_reverse: KL(ref || pi)).

    logp, logp_ref: [B, T] log-probabilities of the sampled tokens; logp_all, logp_ref_all: [B, T, V]
    full log-probabilities, needed only for the exact estimators.
    """
    if estimator in ("exact", "exact_reverse"):
        if logp_all is None or logp_ref_all is None:
            raise ValueError(f"the {estimator} KL needs full-vocabulary log-probabilities")
        if estimator == "exact":
            return exact_kl(logp_all, logp_ref_all)
        return exact_kl(logp_ref_all, logp_all)
    logr = logp_ref - logp
    if estimator == "k1":
        return -logr
    if estimator == "k2":
        return 0.5 * logr ** 2
    if estimator == "k3":
        return torch.expm1(logr) - logr
    raise ValueError(f"unknown KL estimator {estimator!r}; use one of {', '.join(KL_ESTIMATORS)}")


class KLController:
    """The KL coefficient: fixed, or adaptive (Ziegler et al. 2019, as TRL's AdaptiveKLController).

    Adaptive: after a phase with mean KL `kl` (nats per completion) over `n_samples` samples,
    coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_samples / horizon.
    """

    def __init__(self, coef: float, target: float | None = None, horizon: float = 10_000):
        self.coef, self.target, self.horizon = float(coef), target, float(horizon)

    def update(self, kl: float, n_samples: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + error * n_samples / self.horizon
