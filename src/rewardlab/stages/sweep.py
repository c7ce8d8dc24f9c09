"""The `sweep` stage: the reward-KL frontier, PPO (the ppo section's settings) at several KL coefficients, and
optionally the reward's KL-optimal curve beside it (`rl.sweep.optimum_curve`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from rewardlab.io import read_jsonl
from rewardlab.report import figures
from rewardlab.rl.config import PPOConfig
from rewardlab.rl.sweep import check_sweep, sweep_kl
from rewardlab.schema import from_json
from rewardlab.stages.common import Context, Planner, RunConfig
from rewardlab.stats import Estimate

NAME = "sweep"
ARTIFACTS = {"frontier": "frontier.jsonl", "frontier_png": "frontier.png", "optimum": "optimum.jsonl"}


@dataclass
class Config:
    kl_coefs: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)  # KL penalty coefficients, one PPO run each
    phases: int = 20               # PPO phases per coefficient (the main PPO run has its own)
    eval_samples: int = 256        # samples of each policy's final evaluation
    parallel_runs: int = 1         # runs trained at once, each in its own process (`rl.sweep`); the same numbers
    optimum_prompts: int = 0       # prompts of the reward's KL-optimal curve (the base tilted by exp(reward / beta)); 0: not drawn
    optimum_samples: int = 512     # base samples per prompt for that curve (its estimates lean to the base when few)
    ppo: PPOConfig | None = None   # filled in by the pipeline: the ppo section's config

    def validate(self) -> None:
        check_sweep(self.kl_coefs, self.parallel_runs, self.optimum_prompts, self.optimum_samples)


@dataclass
class FrontierPoint:
    kl_coef: float
    kl_exact: float                # KL(policy || base) per completion, nats
    reward_mean: Estimate          # the policy's mean true reward
    reward_base: float
    seconds: float
    grammatical_rate: float | None = None


@dataclass
class OptimumPoint:
    """The reward's KL-optimal policy at one beta, estimated from base samples (CIs over prompts)."""

    beta: float                    # reward units per nat
    reward: Estimate               # its mean true reward
    kl: Estimate                   # KL(it || base) per completion, nats
    ess: float                     # effective base samples per prompt behind it
    grammatical: Estimate | None = None  # its grammatical rate (review world only)


@dataclass
class SweepSection:
    points: list[FrontierPoint]    # one per KL coefficient, in the config's order
    optimum: list[OptimumPoint] = field(default_factory=list)  # by beta; empty when not drawn (optimum_prompts 0)


@dataclass
class Results:
    sweep: SweepSection


def plan(run: RunConfig, p: Planner) -> None:
    ppo = next((s.config for s in p.stages if s.name == "ppo"), None)
    if run.sweep is None or ppo is None:
        return
    cfg = p.config(Config, NAME, run.sweep)
    swept = dataclasses.replace(ppo, phases=cfg.phases, eval_samples=cfg.eval_samples)
    p.add(NAME, dataclasses.replace(cfg, ppo=swept), {"base": Path(p.base), **p.data_inputs()})


def frontier_figure(section: SweepSection) -> str:
    """The reward-KL frontier of the section's points (`report.figures.frontier`), the base model's reward as a
    line, and the KL-optimal curve when the section has one."""
    points, optimum = section.points, section.optimum
    return figures.frontier([p.kl_exact for p in points], [p.reward_mean.value for p in points],
                            [tuple(p.reward_mean.ci) for p in points], [f"kl_coef={p.kl_coef:g}" for p in points],
                            reward_base=points[0].reward_base,
                            optimum=([o.kl.value for o in optimum], [o.reward.value for o in optimum]) if optimum else None)


def save_frontier(folder: Path) -> SweepSection:
    """The frontier (and KL-optimal curve, if any) `rl.sweep.sweep_kl` wrote into `folder`, its figure saved there
    as frontier.png."""
    points = [FrontierPoint(kl_coef=r["kl_coef"], kl_exact=r["kl_exact"],
                            reward_mean=from_json(Estimate, r["reward_mean"]), reward_base=r["reward_base"],
                            seconds=r["seconds"], grammatical_rate=r.get("grammatical_rate"))
              for r in read_jsonl(folder / ARTIFACTS["frontier"])]
    optimum = [from_json(OptimumPoint, {k: r[k] for k in ("beta", "reward", "kl", "ess", "grammatical") if k in r})
               for r in read_jsonl(folder / ARTIFACTS["optimum"])] if (folder / ARTIFACTS["optimum"]).is_file() else []
    section = SweepSection(points, optimum)
    figures.save_png(frontier_figure(section), folder / ARTIFACTS["frontier_png"])
    return section


def run(cfg: Config, ctx: Context) -> Results:
    sweep_kl(cfg.ppo, cfg.kl_coefs, ctx.out, cfg.parallel_runs, cfg.optimum_prompts, cfg.optimum_samples)
    return Results(save_frontier(ctx.out))
