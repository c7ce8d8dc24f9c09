"""The sentiment world's three earlier measurements, taken on one organism with the organism's own reward
(its reward spec; agreement's reads the prompts), so they can be read against a truth:

    reward_relevance   SAE reward relevance post minus base (`sae.diffing.reward_relevance`): per model,
                       `relevance_saes` SAEs at the middle site (`hypotheses.middle_site`) on the completion
                       tokens of the policy's and the base's samples (the samples every method reads); per SAE
                       the top-k features by |Pearson| of their mean completion activation with the organism's
                       reward, chosen on the train prompts, their sign-aligned correlations summed on the test
                       prompts; CI resamples test prompts and SAEs
    crosscoder         post-only latents of a BatchTopK crosscoder after Latent Scaling
                       (`sae.diffing.run_crosscoder`), trained on the train prompts' tokens at the same site,
                       classified on the test prompts' tokens, with the tokens they fire on most
    steering           the mean-difference direction (`probes.cross.mean_difference_direction`: post's mean
                       completion activation at the last block over the base's samples of train prompts, above
                       the median organism reward minus below) steered on the test prompts at the positions that
                       pick tokens (`steer.dose_response`, the probes stage's defaults at fewer alphas, random
                       directions and prompts); at the largest alpha that keeps the grammatical rate (alpha_up),
                       the effect on the organism's reward and that effect over the largest mean |effect| of the
                       random directions, both with a paired bootstrap over the steered prompts

The train/test split is by prompt (`sae.diffing.prepare_stores`, 80/20). Every estimate keeps its bootstrap
draws so `measures_cell` can pool organism seeds the way `score.over_seeds` pools the method cells.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from rewardlab import stats
from rewardlab.acts import collect_activations
from rewardlab.organisms.hypotheses import middle_site
from rewardlab.organisms.score import contain, over_seeds
from rewardlab.probes.cross import mean_difference_direction
from rewardlab.sae.diffing import DiffConfig, modeled_tokens, prepare_stores, reward_relevance, run_crosscoder
from rewardlab.sae.train import TrainConfig
from rewardlab.sites import n_layers
from rewardlab.steer import SteerConfig, dose_response
from rewardlab.stats import Estimate


@dataclass
class MeasureSettings:
    """How much the three measurements read on one organism (defaults: the tiny preset's)."""

    k: int = 16                    # active latents per token of every dictionary (the sae stage's)
    expansion: int = 1             # relevance SAEs' width x d_model (the sae stage's smallest)
    relevance_saes: int = 2        # SAEs per model the relevance averages (the sae stage's)
    n_top_features: int = 30       # features whose aligned correlations are summed (the sae stage's)
    crosscoder_expansion: int = 4  # crosscoder width x d_model (the sae stage's)
    n_tokens: int = 100_000        # training tokens per dictionary (the sae stage's: 2M)
    train_batch_size: int = 256    # tokens per dictionary training step
    steer_alphas: tuple[float, ...] = (-0.1, 0.0, 0.05, 0.1)  # x the steering site's typical norm
    n_random: int = 4              # random control directions (the probes stage's: 8)
    n_steer_prompts: int = 32      # test prompts steered (at most those the split holds out)
    steer_samples_per_prompt: int = 2
    max_new_tokens: int = 32       # tokens per steered sample
    batch_size: int = 64           # prompts per generation or forward batch
    n_boot: int = 1000             # bootstrap draws of each estimate

    def diff_config(self, seed: int) -> DiffConfig:
        return DiffConfig(k=self.k, expansions=(self.expansion,), relevance_saes=self.relevance_saes,
                          n_top_features=self.n_top_features, crosscoder_expansion=self.crosscoder_expansion,
                          train=TrainConfig(batch_size=self.train_batch_size, n_tokens=self.n_tokens, seed=seed,
                                            progress=False), seed=seed)


def _estimate(est: Estimate | dict, draws: Sequence[float]) -> dict:
    """An estimate (its CI widened to contain its value, as `score.over_seeds` does) with its draws."""
    est = est if isinstance(est, Estimate) else Estimate(est["value"], tuple(est["ci"]), est["n"], est.get("n_groups"))
    return {**contain(est).to_dict(), "draws": [float(d) for d in draws]}


def _relevance(stores: dict, site: str, train_rows, cfg: DiffConfig) -> dict:
    rel = reward_relevance(stores, site, train_rows, cfg, keep_draws=True)
    control = max((abs(c["value"]) for c in rel.get("seed_control", {}).values()), default=0.0)
    return {"k": rel["k"], "n_saes": rel["n_saes"], "features": rel["features"], "base": _estimate(rel["base"], []),
            "post": _estimate(rel["post"], []),
            "post_minus_base": _estimate(rel["post_minus_base"], rel["post_minus_base_draws"]),
            "seed_control_max_abs": control}


def _crosscoder(tokenizer, stores: dict, site: str, train_rows, test_rows, cfg: DiffConfig) -> dict:
    tokens = modeled_tokens(stores, site)
    train_mask = torch.isin(tokens["base"].row_ids, torch.as_tensor(train_rows, dtype=torch.long))
    res = run_crosscoder(tokenizer, stores, tokens, train_mask, test_rows, site, cfg)
    return {"post_only": res["counts_after"].get("post_only", 0), "counts_before": res["counts_before"],
            "counts_after": res["counts_after"],
            "post_only_top_tokens": [[x["token"] for x in latent.get("top_examples", [])]
                                     for latent in res["post_only"][:10]]}


def steering_over_random(steered: dict, name: str, prompts: Sequence[str], seed: int, n_boot: int) -> dict:
    """At alpha_up of direction `name` in a `steer.dose_response(..., keep_random_rewards=True)` result: the
    effect (mean reward minus the unsteered sample's) and the effect over the largest mean |effect| of the
    random directions, each with a bootstrap that resamples the steered `prompts` (one per sample) for the
    direction and the random controls together. alpha_up None: no positive alpha kept fluency; over_random
    None: no random direction moved the mean reward there."""
    summary, alphas = steered["directions"][name]["summary"], list(steered["alphas"])
    out = {"alpha_up": summary["alpha_up"], "typical_norm": steered["typical_norm"], "n": len(prompts),
           "n_prompts": len(set(prompts)), "effect": None, "random_max_abs_effect": None, "over_random": None}
    if summary["alpha_up"] is None:
        return out
    at = alphas.index(summary["alpha_up"])
    by = {(s["alpha"], i % len(prompts)): s["reward"] for i, s in enumerate(
        r for r in steered["samples"] if r["direction"] == name)}
    up = np.array([by[(summary["alpha_up"], i)] for i in range(len(prompts))])
    reference = np.array([by[(0.0, i)] for i in range(len(prompts))])
    randoms = np.array([rs[at] for rs in steered["random_rewards"]]) - reference  # [n_random, n]

    def effect(i):
        return float(np.mean(up[i.astype(int)] - reference[i.astype(int)]))

    def ratio(i):
        i = i.astype(int)
        top = np.abs(randoms[:, i].mean(1)).max()
        return effect(i) / top if top > 0 else float("inf")
    rows, draws = np.arange(len(prompts)), {"effect": [], "ratio": []}
    est = {k: stats.bootstrap(fn, rows, groups=list(prompts), n_boot=n_boot, seed=seed, draws_out=draws[k])
           for k, fn in (("effect", effect), ("ratio", ratio))}
    finite = np.isfinite(est["ratio"].value)  # not when no random direction moved the reward at all
    out.update(effect=_estimate(est["effect"], draws["effect"]), random_max_abs_effect=summary["random_max_abs_effect"],
               over_random=_estimate(est["ratio"], draws["ratio"]) if finite else None)
    return out


def _steering(post, tokenizer, records: list[dict], train_rows, test_rows, reward, checker, seed: int,
              s: MeasureSettings) -> dict:
    site = f"blocks.{n_layers(post) - 1}.hook_resid_post"
    fit = [records[int(i)] for i in train_rows if records[int(i)]["source"] == "base" and records[int(i)]["completion"]]
    x = collect_activations(post, tokenizer, fit, [site], ["mean_completion"], s.batch_size)[f"{site}|mean_completion"]
    direction = mean_difference_direction(x.double().numpy(), [r["reward"] for r in fit])
    heldout = list(dict.fromkeys(records[int(i)]["prompt"] for i in test_rows))[:s.n_steer_prompts]
    prompts = [p for p in heldout for _ in range(s.steer_samples_per_prompt)]
    cfg = SteerConfig(site=site, alphas=tuple(s.steer_alphas), where="completion", n_random=s.n_random,
                      max_new_tokens=s.max_new_tokens, batch_size=s.batch_size, seed=seed, n_boot=s.n_boot)
    steered = dose_response(post, tokenizer, prompts, {"mean_diff": direction}, cfg, reward, checker=checker,
                            progress=False, keep_random_rewards=True)
    return {"site": site, "alphas": list(s.steer_alphas), "n_direction_rows": len(fit),
            **steering_over_random(steered, "mean_diff", prompts, seed, s.n_boot)}


def organism_records(prompts: Sequence[str], policy: Sequence[str], base_samples: Sequence[str],
                     reward: Callable[[list[str], list[str]], list[float]]) -> list[dict]:
    """Records {prompt, completion, source, reward} of the policy's then the base's completions of `prompts` (one
    prompt per completion, the same list for both), scored by the organism's `reward(completions, prompts)`."""
    completions, repeated = [*policy, *base_samples], [*prompts, *prompts]
    sources = ["policy"] * len(policy) + ["base"] * len(base_samples)
    return [{"prompt": p, "completion": c, "source": src, "reward": float(r)}
            for p, c, src, r in zip(repeated, completions, sources, reward(completions, repeated))]


def dictionary_measures(base, post, tokenizer, records: list[dict], seed: int, s: MeasureSettings, scratch: Path
                        ) -> tuple[dict, np.ndarray, np.ndarray]:
    """({site, n_rows, n_train_rows, n_test_rows, reward_relevance, crosscoder}, train rows, test rows) on
    `organism_records`; `scratch` holds the activation caches while they run and is removed."""
    cfg, site = s.diff_config(seed), middle_site(post)
    try:
        _, stores, _, train_rows, test_rows = prepare_stores(base, post, tokenizer, records, Path(scratch), [site], cfg)
        out = {"site": site, "n_rows": len(records), "n_train_rows": len(train_rows), "n_test_rows": len(test_rows),
               "reward_relevance": _relevance(stores, site, train_rows, cfg),
               "crosscoder": _crosscoder(tokenizer, stores, site, train_rows, test_rows, cfg)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out, train_rows, test_rows


def measure_organism(base, post, tokenizer, prompts: Sequence[str], policy: Sequence[str], base_samples: Sequence[str],
                     reward: Callable[[list[str], list[str]], list[float]], seed: int, s: MeasureSettings, scratch: Path,
                     checker: Callable[[str, str], bool] | None = None) -> dict:
    """The three measurements (module docstring) on the completions `policy` and `base_samples` of `prompts`
    (`organism_records`), against `reward`; `checker(completion, prompt)`: grammaticality for the steering's
    fluency bound (None: perplexity). JSON: {site, n_rows, n_train_rows, n_test_rows, reward_relevance,
    crosscoder, steering}; each estimate with its bootstrap "draws"."""
    records = organism_records(prompts, policy, base_samples, reward)
    out, train_rows, test_rows = dictionary_measures(base, post, tokenizer, records, seed, s, scratch)
    out["steering"] = _steering(post, tokenizer, records, train_rows, test_rows, reward, checker, seed, s)
    return out


def _pooled(value: float, draws: Sequence[float]) -> Callable[[np.random.Generator | None], float]:
    """A seed's metric for `over_seeds`: its value, or one of its bootstrap draws."""
    draws = np.asarray(draws, dtype=np.float64)
    return lambda rng: value if rng is None or not len(draws) else float(draws[rng.integers(len(draws))])


def measures_cell(per_seed: Sequence[dict], n_boot: int = stats.N_BOOT) -> dict[str, Estimate | None]:
    """Per organism, over its seeds' `measure_organism` results: {relevance_post_minus_base,
    crosscoder_post_only, steer_effect, steer_over_random}, each the mean over seeds with a CI that resamples
    seeds, then within each one of its bootstrap draws (`score.over_seeds`); the post-only count has no
    within-seed draws (CI over seeds only); a steering estimate pools the seeds whose alpha_up exists
    (None when none does)."""
    def pooled(get) -> Estimate | None:
        found = [e for e in map(get, per_seed) if e is not None]
        return over_seeds([_pooled(e["value"], e["draws"]) for e in found], n_boot=n_boot) if found else None
    return {"relevance_post_minus_base": pooled(lambda m: m["reward_relevance"]["post_minus_base"]),
            "crosscoder_post_only": pooled(lambda m: {"value": float(m["crosscoder"]["post_only"]), "draws": []}),
            "steer_effect": pooled(lambda m: m["steering"]["effect"]),
            "steer_over_random": pooled(lambda m: m["steering"]["over_random"])}
