"""The KL-optimal policies of a reward, and so the best any KL-penalized optimizer can do.

PPO with a KL penalty of coefficient beta maximizes E_pi[r] - beta KL(pi || pi_ref); the maximizer is the
reference tilted by the reward (Korbak et al. 2022, Rafailov et al. 2023):

    pi_beta(y | x) = pi_ref(y | x) exp(r(x, y) / beta) / Z_beta(x).

Over beta these policies trace the frontier of reward against KL: no policy gains more reward at the same
KL. What such a policy does besides reward (in the review world: its grammatical rate) is what the
objective itself asks for; an optimizer that ends elsewhere at the same KL shows its own path, not the
objective's.

Estimated from N samples per prompt of the reference, y_1..y_N, by self-normalized importance weights
w_i = softmax_i(r_i / beta): the tilted mean of any per-sample measure m is sum_i w_i m_i, and the KL is
sum_i w_i log(N w_i) (exact for the empirical distribution of the N samples, which the tilt is then a
reweighting of). The estimates are consistent in N and biased toward the reference for small effective
sample sizes 1 / sum_i w_i^2 (reported per beta): tails the reference never sampled get no weight. CIs
resample prompts and so cover the choice of prompts, not that bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from rewardlab.errors import InputError
from rewardlab.rl.rollout import completion_texts, rollout
from rewardlab.stats import Estimate, bootstrap
from rewardlab.text import encode_prompts, stop_ids


@dataclass
class FrontierPoint:
    """The tilted policy pi_beta's figures, each with a bootstrap CI over prompts (n = prompts)."""

    beta: float                    # reward units per nat
    reward: Estimate               # tilted mean reward, reward units
    gain: Estimate                 # (tilted mean reward - reference mean) / reference std, over all samples
    kl: Estimate                   # KL(pi_beta || pi_ref), nats per completion
    measures: dict[str, Estimate] = field(default_factory=dict)  # tilted mean of each per-sample measure
    ess: float = 0.0               # effective samples per prompt, mean over prompts (of N)

    def to_dict(self) -> dict:
        """{beta, reward, gain, kl, each measure by name (Estimate dicts), ess}"""
        return {"beta": self.beta, "reward": self.reward.to_dict(), "gain": self.gain.to_dict(),
                "kl": self.kl.to_dict(), **{k: e.to_dict() for k, e in self.measures.items()}, "ess": self.ess}


def tilt_weights(rewards: np.ndarray, beta: float) -> np.ndarray:
    """[P, N]: each prompt's self-normalized weights softmax(rewards[p] / beta) (rows sum to 1)."""
    if beta <= 0:
        raise InputError(f"beta must be above 0, got {beta}")
    z = np.asarray(rewards, dtype=np.float64) / beta
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _per_prompt(rewards: np.ndarray, beta: float, measures: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """[P] arrays: tilted reward, KL and measures, the reference's reward mean and mean square, and ESS."""
    w = tilt_weights(rewards, beta)
    n = rewards.shape[1]
    logs = np.log(np.where(w > 0, w * n, 1.0))  # 0 log 0 = 0
    return {"tilted": (w * rewards).sum(1), "kl": (w * logs).sum(1), "ref": rewards.mean(1),
            "ref_sq": (rewards ** 2).mean(1), "ess": 1.0 / (w ** 2).sum(1),
            **{f"m:{k}": (w * v).sum(1) for k, v in measures.items()}}


def _gain(tilted, ref, ref_sq) -> float:
    """(mean tilted - mean reference) / reference std over all samples (equal samples per prompt)."""
    mu = ref.mean()
    return float((tilted.mean() - mu) / math.sqrt(max(ref_sq.mean() - mu ** 2, 0.0)))


def _checked(rewards, measures) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise InputError(f"rewards must be [prompts, samples per prompt] with at least 2 samples, got {rewards.shape}")
    if not np.isfinite(rewards).all():
        raise InputError("rewards hold a non-finite value", fix="score every sample with a finite reward")
    measures = {k: np.asarray(v, dtype=np.float64) for k, v in (measures or {}).items()}
    for k, v in measures.items():
        if v.shape != rewards.shape:
            raise InputError(f"measure {k!r} is {v.shape}, the rewards {rewards.shape}: one value per sample")
    return rewards, measures


def frontier_point(rewards, beta: float, measures: dict[str, np.ndarray] | None = None, n_boot: int = 1000,
                   seed: int = 0) -> FrontierPoint:
    """pi_beta's figures from the reference's rewards [P, N] (N samples of each of P prompts) and any
    per-sample measures {name: [P, N]}, CIs resampling prompts."""
    rewards, measures = _checked(rewards, measures)
    per = _per_prompt(rewards, beta, measures)
    kw = dict(n_boot=n_boot, seed=seed)
    return FrontierPoint(
        beta=beta,
        reward=bootstrap(np.mean, per["tilted"], **kw),
        gain=bootstrap(_gain, per["tilted"], per["ref"], per["ref_sq"], **kw),
        kl=bootstrap(np.mean, per["kl"], **kw),
        measures={k: bootstrap(np.mean, per[f"m:{k}"], **kw) for k in measures},
        ess=float(per["ess"].mean()))


def beta_for(rewards, *, kl: float | None = None, gain: float | None = None, lo: float = 1e-3,
             hi: float = 1e3, iters: int = 60) -> float:
    """The beta whose tilted policy has the given KL (nats per completion) or the given gain (reference
    stds), by bisection on log beta (both fall as beta grows). Exactly one of kl and gain."""
    rewards, _ = _checked(rewards, None)
    if (kl is None) == (gain is None):
        raise InputError("give exactly one of kl and gain")

    def figure(beta: float) -> float:
        per = _per_prompt(rewards, beta, {})
        return float(per["kl"].mean()) if kl is not None else _gain(per["tilted"], per["ref"], per["ref_sq"])

    target = kl if kl is not None else gain
    if not figure(hi) <= target <= figure(lo):
        raise InputError(f"{'kl' if kl is not None else 'gain'} {target} is outside what these samples reach "
                         f"({figure(hi):.3g} to {figure(lo):.3g})", fix="sample more per prompt or aim lower")
    a, b = math.log(lo), math.log(hi)
    for _ in range(iters):
        mid = (a + b) / 2
        a, b = (mid, b) if figure(math.exp(mid)) > target else (a, mid)
    return math.exp((a + b) / 2)


@torch.no_grad()
def reference_samples(model, tokenizer, prompts: Sequence[str], per_prompt: int, reward: Callable[..., list[float]],
                      measures: dict[str, Callable[[str, str], float]] | None = None, *, max_new_tokens: int,
                      temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                      rows: int = 1024, progress: bool = False) -> dict[str, np.ndarray]:
    """`per_prompt` samples of each prompt from `model` (the reference), up to `rows` per decoding loop,
    scored by `reward(texts, prompts)` and each measure(text, prompt): {"rewards": [P, N], name: [P, N]}."""
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    flat = [p for p in prompts for _ in range(per_prompt)]
    scores: dict[str, list[float]] = {"rewards": [], **{k: [] for k in measures or {}}}
    for lo in tqdm(range(0, len(flat), rows), desc="reference samples", unit="loop", disable=not progress,
                   leave=False):
        batch = flat[lo:lo + rows]
        ids, mask, _ = encode_prompts(tokenizer, batch, device)
        ro = rollout(model, ids, mask, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                     top_p=top_p, eos_id=stop_ids(tokenizer), pad_id=tokenizer.pad_token_id, generator=generator)
        texts = completion_texts(tokenizer, ro)
        scores["rewards"] += reward(texts, batch)
        for name, measure in (measures or {}).items():
            scores[name] += [float(measure(t, p)) for t, p in zip(texts, batch)]
    return {k: np.asarray(v, dtype=np.float64).reshape(len(prompts), per_prompt) for k, v in scores.items()}
