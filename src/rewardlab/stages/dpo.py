"""The `dpo` stage: DPO through TRL on the pairs stage's preference pairs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rewardlab.rl.config import DPOTrainConfig as Config
from rewardlab.rl.dpo import train_dpo
from rewardlab.schema import from_json
from rewardlab.stages import pairs
from rewardlab.stages.common import Context, Planner, RunConfig
from rewardlab.stats import Estimate

NAME = "dpo"
ARTIFACTS = {"dpo_policy": "policy"}


@dataclass
class DPOSection:
    """The DPO policy against its reference (the base) on fresh samples and held-out pairs."""

    reward_base: Estimate
    reward_policy: Estimate
    pair_accuracy: Estimate        # held-out pairs whose chosen completion gets the larger implicit reward
    kl_exact: Estimate             # KL(policy || base) per completion, nats
    seconds: float
    grammatical_rate: Estimate | None = None  # review world only


@dataclass
class Results:
    dpo: DPOSection


def plan(run: RunConfig, p: Planner) -> None:
    if run.dpo is None:
        return
    pairs_file = p.stage_dir(pairs.NAME) / pairs.ARTIFACTS["pairs"]
    cfg = p.config(Config, NAME, run.dpo, base=p.base, pairs=str(pairs_file), prompts=p.prompts, seed=run.seed)
    p.add(NAME, cfg, {"base": Path(p.base), "pairs": p.stage_dir(pairs.NAME), **p.data_inputs()})
    p.models["dpo"] = str(p.stage_dir(NAME) / ARTIFACTS["dpo_policy"])


def threads(cfg: Config) -> int | None:
    """The CPU threads the stage keeps busy (None: torch's count): `run_plan` can run a one-thread stage beside
    another."""
    return cfg.threads


def run(cfg: Config, ctx: Context) -> Results:
    s = train_dpo(cfg, ctx.out)
    ci = {k: from_json(Estimate, s[f"{k}_ci"]) for k in ("reward_base", "reward_policy", "pair_accuracy", "kl_exact")}
    grammatical = s.get("grammatical_rate_ci")
    return Results(DPOSection(**ci, seconds=s["seconds"],
                              grammatical_rate=None if grammatical is None else from_json(Estimate, grammatical)))
