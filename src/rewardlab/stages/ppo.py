"""The `ppo` stage: PPO with a value head and KL control against the frozen base (`rl.ppo.train_ppo`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rewardlab.rl.config import PPOConfig as Config
from rewardlab.rl.ppo import train_ppo
from rewardlab.schema import from_json
from rewardlab.stages.common import Context, Planner, RunConfig
from rewardlab.stats import Estimate

NAME = "ppo"
ARTIFACTS = {"ppo_policy": "policy", "value_head": "value_head.safetensors", "ppo_metrics": "metrics.jsonl",
             "ppo_samples": "samples.jsonl"}


@dataclass
class PPOSection:
    """The PPO policy against its base on `eval_samples` fresh samples (CIs over those samples)."""

    reward_base: Estimate          # mean true reward of the base model
    reward_base_std: float
    reward_policy: Estimate        # mean true reward of the policy
    kl_exact: Estimate             # KL(policy || base) per completion, nats, exact over the vocabulary
    reward_gain_base_std: float | None  # (policy - base) reward in base standard deviations
    seconds: float
    grammatical_rate: Estimate | None = None  # review world only
    grammatical_rate_base: float | None = None
    phases_over_step_size_limits: list[int] = field(default_factory=list)  # approx_kl or clip fraction too high
    phases_averaged: int = 0       # phases whose weights the policy is the mean of (0: the last phase's weights)


@dataclass
class Results:
    ppo: PPOSection


def section_of(summary: dict) -> PPOSection:
    """The PPO section of a `train_ppo` summary (also used by the sweep stage's rows)."""
    ci = {k: from_json(Estimate, summary[f"{k}_ci"]) for k in ("reward_base", "reward_policy", "kl_exact")}
    grammatical = summary.get("grammatical_rate_ci")
    return PPOSection(**ci, reward_base_std=summary["reward_base_std"],
                      reward_gain_base_std=summary["reward_gain_base_std"], seconds=summary["seconds"],
                      grammatical_rate=None if grammatical is None else from_json(Estimate, grammatical),
                      grammatical_rate_base=summary.get("grammatical_rate_base"),
                      phases_over_step_size_limits=summary.get("phases_over_step_size_limits", []),
                      phases_averaged=summary.get("phases_averaged", 0))


def plan(run: RunConfig, p: Planner) -> None:
    if run.ppo is None or "post" in p.models:
        return
    cfg = p.config(Config, NAME, run.ppo, base=p.base, prompts=p.prompts, seed=run.seed)
    p.check_site(cfg.value_site, "ppo.value_site")
    p.add(NAME, cfg, {"base": Path(p.base), **p.data_inputs()})
    p.models["ppo"] = str(p.stage_dir(NAME) / ARTIFACTS["ppo_policy"])


def threads(cfg: Config) -> int | None:
    """The CPU threads the stage keeps busy (None: torch's count): `run_plan` can run a one-thread stage beside
    another."""
    return cfg.threads


def run(cfg: Config, ctx: Context) -> Results:
    return Results(section_of(train_ppo(cfg, ctx.out)))
