"""The `pairs` stage: preference pairs (best and worst of a few samples per prompt under the true reward)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rewardlab.rl.config import PairsConfig as Config
from rewardlab.rl.pairs import make_preference_pairs
from rewardlab.stages.common import Context, Planner, RunConfig

NAME = "pairs"
ARTIFACTS = {"pairs": "pairs.jsonl"}


@dataclass
class PairsSection:
    n_pairs: int
    n_ties: int                    # prompts whose samples all had the same reward (no pair)
    mean_margin: float             # chosen minus rejected true reward


@dataclass
class Results:
    pairs: PairsSection


def plan(run: RunConfig, p: Planner) -> None:
    if run.dpo is None:
        return
    cfg = p.config(Config, NAME, run.pairs, model=p.base, prompts=p.prompts, seed=run.seed)
    p.add(NAME, cfg, {"base": Path(p.base), **p.data_inputs()})


def run(cfg: Config, ctx: Context) -> Results:
    return Results(PairsSection(**make_preference_pairs(cfg, ctx.out / ARTIFACTS["pairs"])))
