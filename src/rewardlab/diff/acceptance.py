"""The diffing figures of a run: implicit reward vs true reward, divergent sampling, audits and
parameter divergence, each statistic with its bootstrap CI and n.

`diffing_results(base, ppo=..., dpo=..., post=...)` returns the `results.json` sections
`implicit_reward`, `divergent`, `audit` and `params` (with details beside the headline keys):

- implicit reward: `n_samples` base-model samples on the held-out prompts (cycled; the CI resamples
  prompts), Spearman between log pi_policy/pi_base summed over the completion and the true reward;
- divergent sampling from the main policy (PPO, else `post`, else DPO) at `alphas`: mean true reward
  and grammatical rate per alpha (outside the review world: perplexity under the base model);
- audits of the utility and of the DPO policy's implicit reward (reference: base) on review-world
  minimal pairs; outside the world `audit` is `{"skipped": reason}`;
- parameter divergence of the main policy, its most changed blocks.

Inside the review world (`base` is a world's base model) the prompts, generation settings and grammar
are the world's and the reward is the utility; `prompts`, `reward` and `generation` set them for
other models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from rewardlab import stats
from rewardlab.errors import InputError, raise_first_failed


@dataclass
class DiffingConfig:
    n_samples: int = 1000  # held-out base samples for the implicit-reward correlations
    n_divergent: int = 300  # samples per alpha
    alphas: tuple[float, ...] = (-0.5, 0.0, 2.0)
    plausibility: float = 0.1
    n_audit_sources: int = 300
    batch_size: int = 64
    seed: int = 0

    def validate(self) -> None:
        raise_first_failed([
            (self.n_samples >= 2 and self.n_divergent >= 1 and self.n_audit_sources >= 1 and self.batch_size >= 1,
             "n_samples must be at least 2; n_divergent, n_audit_sources and batch_size at least 1", None),
            (bool(self.alphas) and all(math.isfinite(a) for a in self.alphas), "alphas must be finite numbers",
             None),
            (0 <= self.plausibility <= 1, f"plausibility must be in [0, 1], got {self.plausibility}", None),
        ], "diffing config")


def model_folder(path: str | Path) -> str:
    """A Hugging Face model folder: a training run's `policy/` subfolder, else `path` itself; a name
    with no local folder is returned as given (a Hub name)."""
    if not Path(path).exists():
        return str(path)
    for candidate in (Path(path) / "policy", Path(path)):
        if (candidate / "config.json").is_file():
            return str(candidate)
    raise InputError("no Hugging Face model folder (config.json) here or in policy/", str(path),
                     "give a model folder or a training run folder")


def world_of(base: str | Path):
    """The review world (`rewardlab.world.World`) whose base model is the folder `base`."""
    from rewardlab.world import world_of_model

    world = world_of_model(base)
    if world is None:
        raise InputError("the base model is not a review world's (no world.json beside it)", str(base),
                         "give DIR/base of a folder built by `rewardlab world build`")
    return world


def implicit_vs_true(base_model, policy, tokenizer, samples: list[dict], batch_size: int) -> dict:
    """Spearman (and Pearson) between the implicit reward of `policy` vs base and the samples' `reward`."""
    from rewardlab.diff.implicit import ScoreConfig, implicit_rewards

    rows = implicit_rewards(base_model, policy, tokenizer, [s["prompt"] for s in samples],
                            [s["completion"] for s in samples], ScoreConfig(batch_size=batch_size))
    implicit = [r["implicit_reward"] for r in rows]
    true = [s["reward"] for s in samples]
    groups = [s["prompt"] for s in samples]
    rho = stats.spearman(implicit, true, groups=groups)
    return {"spearman_true": rho.value, "ci": list(rho.ci), "n": rho.n, "n_prompts": rho.n_groups,
            "pearson_true": stats.pearson(implicit, true, groups=groups).to_dict(),
            "spearman_true_mean_per_token": stats.spearman([r["implicit_reward_mean"] for r in rows], true,
                                                           groups=groups).to_dict()}


AUDIT_SKIPPED = "the minimal-pair audit needs the review world's pairs; this base model is not a world's"


def diffing_results(base: str | Path, ppo: str | Path | None = None, dpo: str | Path | None = None,
                    cfg: DiffingConfig = DiffingConfig(), device: str | None = None,
                    out_dir: str | Path | None = None, post: str | Path | None = None,
                    prompts: list[str] | None = None, reward: str = "utility", generation: dict | None = None,
                    dtype: str = "float32") -> dict:
    """The `implicit_reward`, `divergent`, `audit` and `params` sections (see the module docstring).

    prompts: held-out prompts (default: the world's); reward: the true reward's spec; generation:
    max_new_tokens and optionally temperature, top_k, top_p (default: the world's). With `out_dir`,
    also writes the evidence: `divergent.jsonl` (per-token log-probs of both models),
    `params.{json,csv,png}`, `audit_utility/` and `audit_dpo/` (results.json + scores.jsonl)."""
    from rewardlab.audit import PairConfig, audit, get_scorer, make_pairs, world_sources, world_words, write_audit
    from rewardlab.diff.divergent import DivergentConfig, sample_divergent
    from rewardlab.diff.params import parameter_divergence, write_divergence
    from rewardlab.io import write_jsonl
    from rewardlab.models import load_model
    from rewardlab.rewards import get_reward
    from rewardlab.sampling import generate
    from rewardlab.world import world_of_model
    from rewardlab.world.grammar import grammatical_rate

    cfg.validate()
    base = model_folder(base)
    true_reward = get_reward(reward, device=device)
    world = world_of_model(base) if Path(base).is_dir() else None
    if prompts is None or generation is None:
        world = world_of(base)
        prompts = world.heldout_prompts if prompts is None else prompts
        generation = world.generation if generation is None else generation
    if not prompts:
        raise InputError("no held-out prompts to sample from", str(base), "give at least one prompt")
    gen = generation  # max_new_tokens, temperature, top_k, top_p of the samples
    base_model, tokenizer = load_model(base, device=device, dtype=dtype)
    cycled = [prompts[i % len(prompts)] for i in range(cfg.n_samples)]
    generator = torch.Generator().manual_seed(cfg.seed)
    samples = generate(base_model, tokenizer, cycled, max_new_tokens=gen["max_new_tokens"],
                       temperature=gen.get("temperature", 1.0), top_k=gen.get("top_k", 0),
                       top_p=gen.get("top_p", 1.0), generator=generator, batch_size=cfg.batch_size,
                       desc="sampling (base)")
    records = [{"prompt": s.prompt, "completion": s.completion} for s in samples]
    for r, u in zip(records, true_reward([r["completion"] for r in records])):
        r["reward"] = u

    policies = {name: model_folder(p) for name, p in (("ppo", ppo), ("post", post), ("dpo", dpo)) if p is not None}
    main = next(iter(policies), None)  # divergent sampling and parameter divergence: PPO, else post, else DPO
    out: dict = {"implicit_reward": {}, "audit": {}}
    if world is not None:
        pairs = make_pairs(world_sources(cfg.n_audit_sources, cfg.seed, 3), world_words(), PairConfig(seed=cfg.seed))
        utility_audit, utility_rows = audit(get_scorer("utility"), pairs, seed=cfg.seed)
        out["audit"]["utility"] = utility_audit
        if out_dir is not None:
            write_audit(Path(out_dir) / "audit_utility", utility_audit, utility_rows)
    for name, folder in policies.items():
        policy, _ = load_model(folder, device=device, dtype=dtype)
        out["implicit_reward"][name] = implicit_vs_true(base_model, policy, tokenizer, records, cfg.batch_size)
        if name == "dpo" and world is not None:
            dpo_audit, dpo_rows = audit(get_scorer(f"dpo:{folder}", ref=str(base), device=device), pairs,
                                        seed=cfg.seed)
            out["audit"]["dpo_implicit"] = dpo_audit
            if out_dir is not None:
                write_audit(Path(out_dir) / "audit_dpo", dpo_audit, dpo_rows)
        if name == main:
            div_prompts = [prompts[i % len(prompts)] for i in range(cfg.n_divergent)]
            rows = sample_divergent(base_model, policy, tokenizer, div_prompts, DivergentConfig(
                alphas=cfg.alphas, plausibility=cfg.plausibility, max_new_tokens=gen["max_new_tokens"],
                temperature=gen.get("temperature", 1.0), top_p=gen.get("top_p", 1.0), batch_size=cfg.batch_size,
                seed=cfg.seed))
            out["divergent"] = divergent_summary(rows, cfg.alphas, true_reward,
                                                 grammatical_rate if world is not None else None)
            layers = parameter_divergence(base_model, policy)
            if out_dir is not None:
                write_jsonl(Path(out_dir) / "divergent.jsonl", rows)
                write_divergence(layers, out_dir, "base", name)
            out["params"] = {"top_layers": [r.group for r in layers if r.group.startswith("blocks.")][:5],
                             "layers": [vars(r) for r in layers]}
    # headline keys of the pipeline's results.json: the first policy present (PPO, post, DPO)
    headline = next(iter(out["implicit_reward"].values()), None)
    if headline is not None:
        out["implicit_reward"].update(spearman_true=headline["spearman_true"], ci=headline["ci"], n=headline["n"])
    if world is None:
        out["audit"] = {"skipped": AUDIT_SKIPPED}
    else:
        sentiment = out["audit"]["utility"]["per_attribute"]["sentiment"]
        out["audit"].update(accuracy=sentiment["accuracy"], n=sentiment["num_pairs"])
    out["base_samples"] = {"n": len(records), "reward": true_reward.name,
                           "reward_mean": stats.mean([r["reward"] for r in records],
                                                     groups=[r["prompt"] for r in records]).to_dict()}
    return out


def divergent_summary(rows: list[dict], alphas, reward, grammatical_rate=None) -> dict:
    """Per alpha: mean true reward (CI over prompts), grammatical rate (or, with no `grammatical_rate`
    checker, perplexity under the base model), mean implicit reward; and whether the reward CIs are
    disjoint and increasing in alpha."""
    reward_mean, fluency, implicit = [], [], []
    for alpha in alphas:
        sel = [r for r in rows if r["alpha"] == alpha]
        groups = [r["prompt"] for r in sel]
        reward_mean.append(stats.mean(reward([r["completion"] for r in sel]), groups=groups).to_dict())
        if grammatical_rate is not None:
            # the token strings keep the eos, so a finished review must be a complete document
            fluency.append(grammatical_rate([" ".join(r["tokens"]) for r in sel], [r["prompt"] for r in sel]))
        else:
            fluency.append(base_perplexity(sel))
        implicit.append(stats.mean([r["implicit_reward"] for r in sel], groups=groups).to_dict())
    order = sorted(range(len(alphas)), key=lambda i: alphas[i])
    separated = all(reward_mean[a]["ci"][1] < reward_mean[b]["ci"][0] for a, b in zip(order, order[1:]))
    return {"alphas": list(alphas), "reward_mean": reward_mean,
            "grammatical_rate" if grammatical_rate is not None else "base_perplexity": fluency,
            "implicit_reward_mean": implicit, "reward_increases_with_alpha_ci_disjoint": separated}


def base_perplexity(rows: list[dict]) -> dict | None:
    """exp(mean over samples of the per-token negative log-likelihood under the base model), with the
    bootstrap CI (over prompts) of that mean mapped through exp; None when no sample has a token."""
    kept = [r for r in rows if r["logp_base"]]
    if not kept:
        return None
    nll = stats.mean([-sum(r["logp_base"]) / len(r["logp_base"]) for r in kept], groups=[r["prompt"] for r in kept])
    return {"value": math.exp(nll.value), "ci": [math.exp(c) for c in nll.ci], "n": nll.n,
            **({"n_groups": nll.n_groups} if nll.n_groups is not None else {})}
