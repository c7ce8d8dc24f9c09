"""Every method's hypothesis on one organism, saved and loaded, and the benchmark's cells: each method
scored against each organism's truth over its seeds.

Which scores apply to which organism:

    planted                      auroc, precision_at_k of the planted set
    sentiment, flipped, length   spearman_truth with the true per-token score
    agreement                    pair_accuracy on minimal pairs that differ only in the prompt's tone
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rewardlab.diff.implicit import ScoreConfig, implicit_rewards
from rewardlab.io import load_tensors, save_tensors
from rewardlab.organisms import hypotheses as H
from rewardlab.organisms.build import minimal_pairs
from rewardlab.organisms.score import auroc, over_seeds, pair_accuracy, precision_at_k, spearman_truth
from rewardlab.sampling import generate
from rewardlab.stats import N_BOOT, Estimate

SCORES_BY_KIND = {"planted": ("auroc", "precision_at_k"), "utility": ("spearman_truth",),
                  "agreement": ("pair_accuracy",)}


@dataclass
class EvalSettings:
    """How much each method reads on one organism."""

    n_samples: int = 256           # policy samples and base samples (prompts cycled)
    n_pairs: int = 64              # agreement minimal pairs
    n_texts: int = 128             # corpus texts the activation difference lens reads
    n_first: int = 5               # first tokens of each text the lens averages
    alpha: float = 2.0             # divergent sampling amplification
    max_new_tokens: int = 32       # tokens per sample
    batch_size: int = 64           # records per forward pass or generation batch


def _pair_differences(base, post, tokenizer, pairs: list[dict], batch_size: int) -> np.ndarray:
    """Implicit reward (summed log-ratio) after prompt_pos minus after prompt_neg, per pair."""
    cfg = ScoreConfig(batch_size=batch_size)
    completions = [p["completion"] for p in pairs]
    pos = implicit_rewards(base, post, tokenizer, [p["prompt_pos"] for p in pairs], completions, cfg)
    neg = implicit_rewards(base, post, tokenizer, [p["prompt_neg"] for p in pairs], completions, cfg)
    return np.array([a["implicit_reward"] - b["implicit_reward"] for a, b in zip(pos, neg)])


def organism_samples(base, post, tokenizer, prompts: Sequence[str], seed: int, s: EvalSettings):
    """(prompts cycled to s.n_samples, the policy's samples, the base's samples) of `prompts`, each model
    sampled with its own generator seeded `seed`: the samples every method reads."""
    repeated = [prompts[i % len(prompts)] for i in range(s.n_samples)]
    gen = dict(max_new_tokens=s.max_new_tokens, batch_size=s.batch_size)
    policy = generate(post, tokenizer, repeated, generator=torch.Generator().manual_seed(seed), **gen)
    base_samples = generate(base, tokenizer, repeated, generator=torch.Generator().manual_seed(seed), **gen)
    return repeated, policy, base_samples


def evaluate_organism(base, post, tokenizer, prompts: Sequence[str], texts: Sequence[str], reward, seed: int,
                      s: EvalSettings, with_pairs: bool) -> tuple[dict[str, H.Hypothesis], dict]:
    """({method: Hypothesis}, samples) on one organism whose true reward is `reward` (what the probe is fit
    to): samples = {"prompts", "policy", "base"} completions. With `with_pairs`, each hypothesis carries
    its minimal-pair differences."""
    repeated, policy, base_samples = organism_samples(base, post, tokenizer, prompts, seed, s)
    completions = [x.completion for x in policy]
    base_ids = [x.completion_ids for x in base_samples]
    V = len(tokenizer)
    hyps = {
        "implicit": H.implicit_hypothesis(base, post, tokenizer, repeated, completions, seed, s.batch_size),
        "kl": H.kl_hypothesis(base, post, tokenizer, repeated, completions, seed, s.batch_size),
        "divergent": H.divergent_hypothesis(base, post, tokenizer, repeated, base_ids, seed, s.alpha,
                                            s.max_new_tokens),
        "blackbox": H.enrichment("blackbox", [x.completion_ids for x in policy], base_ids, V, seed),
        "adl": H.adl_hypothesis(base, post, tokenizer, texts[:s.n_texts], seed, s.n_first),
        "probe": H.probe_hypothesis(post, tokenizer, repeated * 2, completions + [x.completion for x in base_samples],
                                    reward(completions + [x.completion for x in base_samples], repeated * 2), seed,
                                    batch_size=s.batch_size),
        **H.dictionary_hypotheses(base, post, tokenizer, repeated * 2, completions + [x.completion for x in base_samples],
                                  seed, batch_size=s.batch_size),
        "random": H.random_ranking(V, seed),
    }
    for h in hyps.values():  # a model's unembedding may be wider than the tokenizer
        h.scores, h.replicates = h.scores[:V], h.replicates[:, :V]
    if with_pairs:
        pairs = minimal_pairs(s.n_pairs, seed)
        for name, h in hyps.items():
            h.differences = (_pair_differences(base, post, tokenizer, pairs, s.batch_size) if name == "implicit"
                             else np.zeros(len(pairs)))
    samples = {"prompts": repeated, "policy": completions, "base": [x.completion for x in base_samples]}
    return hyps, samples


def save_hypotheses(path: str | Path, hyps: dict[str, H.Hypothesis], pair_signs: Sequence[float] | None) -> None:
    """safetensors: `{method}.scores`, `{method}.replicates`, `{method}.differences`, and `pair_signs`."""
    tensors = {}
    for name, h in hyps.items():
        tensors[f"{name}.scores"] = torch.from_numpy(h.scores)
        tensors[f"{name}.replicates"] = torch.from_numpy(np.ascontiguousarray(h.replicates))
        if h.differences is not None:
            tensors[f"{name}.differences"] = torch.from_numpy(h.differences)
    if pair_signs is not None:
        tensors["pair_signs"] = torch.tensor(list(pair_signs), dtype=torch.float64)
    save_tensors(path, tensors)


def load_hypotheses(path: str | Path) -> tuple[dict[str, H.Hypothesis], np.ndarray | None]:
    tensors, _ = load_tensors(path)
    methods = sorted({k.split(".")[0] for k in tensors if k != "pair_signs"}, key=lambda m: (
        H.METHODS.index(m) if m in H.METHODS else len(H.METHODS), m))
    hyps = {m: H.Hypothesis(m, tensors[f"{m}.scores"].numpy(), tensors[f"{m}.replicates"].numpy(),
                            tensors[f"{m}.differences"].numpy() if f"{m}.differences" in tensors else None)
            for m in methods}
    return hyps, tensors["pair_signs"].numpy() if "pair_signs" in tensors else None


def _seed_metric(score: str, h: H.Hypothesis, truth: dict, signs: np.ndarray | None):
    """The metric `score` of hypothesis `h` against one seed's truth, as over_seeds wants it."""
    if score == "pair_accuracy":
        d = h.differences

        def metric(rng):
            idx = np.arange(len(d)) if rng is None else rng.integers(0, len(d), len(d))
            return pair_accuracy(d[idx], signs[idx])
        return metric
    vocab = truth["vocabulary"]
    if score in ("auroc", "precision_at_k"):
        planted = set(truth["planted"])
        target = np.array([t.lower() in planted for t in vocab])
        fn = auroc if score == "auroc" else precision_at_k
    else:
        target, fn = np.asarray(truth["token_scores"], dtype=np.float64), spearman_truth

    def metric(rng):
        scores = h.scores if rng is None else h.replicates[rng.integers(len(h.replicates))]
        return fn(scores, target)
    return metric


def score_cell(kind: str, method: str, seeds: Sequence[tuple[dict, dict[str, H.Hypothesis], np.ndarray | None]],
               n_boot: int = N_BOOT) -> dict[str, Estimate]:
    """{score: Estimate over seeds and samples} of `method` on one organism, `seeds` = (truth, hypotheses,
    pair signs) per seed."""
    return {score: over_seeds([_seed_metric(score, hyps[method], truth, signs) for truth, hyps, signs in seeds],
                              n_boot=n_boot)
            for score in SCORES_BY_KIND[kind]}
