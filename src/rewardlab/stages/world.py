"""The `world` stage: build the review world (grammar, tokenizer, pretrained base model, known reward)."""

from __future__ import annotations

from dataclasses import dataclass

from rewardlab.config import from_dict
from rewardlab.errors import InputError
from rewardlab.schema import from_json
from rewardlab.stages.common import Context, Planner, RunConfig
from rewardlab.stats import Estimate
from rewardlab.world import PRESETS, build_world

NAME = "world"
ARTIFACTS = {"base": "base"}


@dataclass
class Config:
    preset: str = "tiny"           # size of the world: micro | tiny | small


@dataclass
class WorldSection:
    """The review world and its pretrained base model, measured on fresh samples."""

    preset: str
    vocab_size: int
    heldout_loss: float            # nats per token on held-out corpus documents
    grammatical_rate: Estimate     # of the base model's samples
    base_reward_mean: Estimate     # true reward of the base model's samples
    base_reward_std: Estimate
    seconds: dict[str, float]      # pretrain, total


@dataclass
class Results:
    world: WorldSection


def plan(run: RunConfig, p: Planner) -> None:
    cfg = from_dict(Config, run.world, f"{p.where}.world")
    if cfg.preset not in PRESETS:
        raise InputError(f"unknown world preset {cfg.preset!r}", f"{p.where}.world.preset",
                         f"use one of: {', '.join(PRESETS)}")
    p.n_blocks = PRESETS[cfg.preset].n_layer
    p.world_preset = cfg.preset
    p.base = str(p.stage_dir(NAME) / ARTIFACTS["base"])
    p.add(NAME, cfg)


def run(cfg: Config, ctx: Context) -> Results:
    info = build_world(ctx.out, preset=cfg.preset, seed=ctx.seed, overwrite=True)
    est = {k: from_json(Estimate, v) for k, v in info["estimates"].items()}
    return Results(WorldSection(
        preset=info["preset"], vocab_size=info["vocab_size"], heldout_loss=info["heldout_loss"],
        grammatical_rate=est["grammatical_rate"], base_reward_mean=est["base_reward_mean"],
        base_reward_std=est["base_reward_std"], seconds=info["seconds"]))
