"""The diffing figures of a review-world run: implicit reward vs true reward, divergent sampling,
audits and parameter divergence, each statistic with its bootstrap CI and n.

`diffing_results(base, ppo=..., dpo=...)` returns the `results.json` sections `implicit_reward`,
`divergent`, `audit` and `params` (with details beside the headline keys):

- implicit reward: `n_samples` base-model samples (the world's generation settings) on the
  world's held-out prompts (cycled; the CI resamples prompts), Spearman between log pi_policy/pi_base summed over the completion and the utility;
- divergent sampling from the PPO policy at `alphas`: mean utility and grammatical rate per alpha;
- audits of the utility and of the DPO policy's implicit reward (reference: base) on world pairs;
- parameter divergence of the PPO policy, its most changed blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rewardlab import stats
from rewardlab.errors import InputError


@dataclass
class DiffingConfig:
    n_samples: int = 1000  # held-out base samples for the implicit-reward correlations
    n_divergent: int = 300  # samples per alpha
    alphas: tuple[float, ...] = (-0.5, 0.0, 2.0)
    plausibility: float = 0.1
    n_audit_sources: int = 300
    batch_size: int = 64
    seed: int = 0


def model_folder(path: str | Path) -> Path:
    """A Hugging Face model folder: a training run's `policy/` subfolder, else `path` itself."""
    path = Path(path)
    for candidate in (path / "policy", path):
        if (candidate / "config.json").is_file():
            return candidate
    raise InputError("no Hugging Face model folder (config.json) here or in policy/", str(path),
                     "give a model folder or a training run folder")


def world_of(base: Path):
    """The review world (`rewardlab.world.World`) whose base model is the folder `base`."""
    from rewardlab.world import world_of_model

    world = world_of_model(base)
    if world is None:
        raise InputError("the base model is not a review world's (no world.json beside it)", str(base),
                         "give DIR/base of a folder built by `rewardlab world build`")
    return world


def implicit_vs_true(base_model, policy, tokenizer, samples: list[dict], batch_size: int) -> dict:
    """Spearman (and Pearson) between the implicit reward of `policy` vs base and the utility."""
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


def diffing_results(base: str | Path, ppo: str | Path | None = None, dpo: str | Path | None = None,
                    cfg: DiffingConfig = DiffingConfig(), device: str | None = None,
                    out_dir: str | Path | None = None) -> dict:
    """The `implicit_reward`, `divergent`, `audit` and `params` sections (see the module docstring).

    With `out_dir`, also writes the evidence: `divergent.jsonl` (per-token log-probs of both models),
    `params.{json,csv,png}`, `audit_utility/` and `audit_dpo/` (results.json + scores.jsonl)."""
    from rewardlab.audit import PairConfig, audit, get_scorer, make_pairs, world_sources, world_words, write_audit
    from rewardlab.diff.divergent import DivergentConfig, sample_divergent
    from rewardlab.diff.params import parameter_divergence, write_divergence
    from rewardlab.io import write_jsonl
    from rewardlab.models import load_model
    from rewardlab.rewards import UtilityReward
    from rewardlab.sampling import generate
    from rewardlab.world.grammar import grammatical_rate

    base = model_folder(base)
    utility = UtilityReward()
    world = world_of(base)
    gen = world.generation  # max_new_tokens, temperature, top_k, top_p of samples in this world
    base_model, tokenizer = load_model(base, device=device, dtype="float32")
    prompts = world.heldout_prompts
    cycled = [prompts[i % len(prompts)] for i in range(cfg.n_samples)]
    generator = torch.Generator().manual_seed(cfg.seed)
    samples = generate(base_model, tokenizer, cycled, max_new_tokens=gen["max_new_tokens"],
                       temperature=gen.get("temperature", 1.0), top_k=gen.get("top_k", 0),
                       top_p=gen.get("top_p", 1.0), generator=generator, batch_size=cfg.batch_size)
    records = [{"prompt": s.prompt, "completion": s.completion} for s in samples]
    for r, u in zip(records, utility([r["completion"] for r in records])):
        r["reward"] = u

    policies = {name: model_folder(p) for name, p in (("ppo", ppo), ("dpo", dpo)) if p is not None}
    out: dict = {"implicit_reward": {}, "audit": {}}
    pairs = make_pairs(world_sources(cfg.n_audit_sources, cfg.seed, 3), world_words(), PairConfig(seed=cfg.seed))
    utility_audit, utility_rows = audit(get_scorer("utility"), pairs, seed=cfg.seed)
    out["audit"]["utility"] = utility_audit
    if out_dir is not None:
        write_audit(Path(out_dir) / "audit_utility", utility_audit, utility_rows)
    for name, folder in policies.items():
        policy, _ = load_model(folder, device=device, dtype="float32")
        out["implicit_reward"][name] = implicit_vs_true(base_model, policy, tokenizer, records, cfg.batch_size)
        if name == "dpo":
            dpo_audit, dpo_rows = audit(get_scorer(f"dpo:{folder}", ref=str(base), device=device), pairs,
                                        seed=cfg.seed)
            out["audit"]["dpo_implicit"] = dpo_audit
            if out_dir is not None:
                write_audit(Path(out_dir) / "audit_dpo", dpo_audit, dpo_rows)
        if name == "ppo":
            div_prompts = [prompts[i % len(prompts)] for i in range(cfg.n_divergent)]
            rows = sample_divergent(base_model, policy, tokenizer, div_prompts, DivergentConfig(
                alphas=cfg.alphas, plausibility=cfg.plausibility, max_new_tokens=gen["max_new_tokens"],
                temperature=gen.get("temperature", 1.0), top_p=gen.get("top_p", 1.0), batch_size=cfg.batch_size,
                seed=cfg.seed))
            out["divergent"] = divergent_summary(rows, cfg.alphas, utility, grammatical_rate)
            layers = parameter_divergence(base_model, policy)
            if out_dir is not None:
                write_jsonl(Path(out_dir) / "divergent.jsonl", rows)
                write_divergence(layers, out_dir, "base", "ppo")
            out["params"] = {"top_layers": [r.group for r in layers if r.group.startswith("blocks.")][:5],
                             "layers": [vars(r) for r in layers]}
    # headline keys of the pipeline's results.json: the first policy present (PPO before DPO)
    headline = next(iter(out["implicit_reward"].values()), None)
    if headline is not None:
        out["implicit_reward"].update(spearman_true=headline["spearman_true"], ci=headline["ci"])
    out["audit"].update(accuracy=utility_audit["per_attribute"]["sentiment"]["accuracy"],
                        n=utility_audit["per_attribute"]["sentiment"]["num_pairs"])
    out["base_samples"] = {"n": len(records), "reward_mean": stats.mean([r["reward"] for r in records],
                                                                         groups=[r["prompt"] for r in records]).to_dict()}
    return out


def divergent_summary(rows: list[dict], alphas, reward, grammatical_rate) -> dict:
    """Per alpha: mean true reward (CI over prompts), grammatical rate, mean implicit reward; and
    whether the reward CIs are disjoint and increasing in alpha."""
    reward_mean, gram, implicit = [], [], []
    for alpha in alphas:
        sel = [r for r in rows if r["alpha"] == alpha]
        groups = [r["prompt"] for r in sel]
        reward_mean.append(stats.mean(reward([r["completion"] for r in sel]), groups=groups).to_dict())
        # the token strings keep the eos, so a finished review must be a complete document
        gram.append(grammatical_rate([" ".join(r["tokens"]) for r in sel], [r["prompt"] for r in sel]))
        implicit.append(stats.mean([r["implicit_reward"] for r in sel], groups=groups).to_dict())
    order = sorted(range(len(alphas)), key=lambda i: alphas[i])
    separated = all(reward_mean[a]["ci"][1] < reward_mean[b]["ci"][0] for a, b in zip(order, order[1:]))
    return {"alphas": list(alphas), "reward_mean": reward_mean, "grammatical_rate": gram,
            "implicit_reward_mean": implicit, "reward_increases_with_alpha_ci_disjoint": separated}
