"""The `prompts` stage (runs with a `models` section): split the user's prompts into training and
held-out prompts. Post-training and probe records use the training prompts; the implicit reward,
divergent sampling and steering use the held-out ones."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from rewardlab.config import check_chat_template_mode, from_dict
from rewardlab.errors import InputError
from rewardlab.io import write_jsonl
from rewardlab.stages.common import Context, ModelsSection, Planner, RunConfig, check_file, prompt_list

NAME = "prompts"
ARTIFACTS = {"train_prompts": "train.jsonl", "heldout_prompts": "heldout.jsonl"}


@dataclass
class Config:
    prompts: str                   # JSONL with a `prompt` field
    heldout_prompts: str | None    # JSONL of held-out prompts; None: split off from `prompts`
    heldout_fraction: float        # of the distinct prompts, when there is no heldout_prompts file


@dataclass
class PromptsSection:
    train: int                     # training prompt rows
    heldout: int                   # distinct held-out prompts
    heldout_from: Literal["file", "split"]


@dataclass
class Results:
    prompts: PromptsSection


def split_heldout(prompts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training rows, held-out prompts): `fraction` of the distinct prompts (at least one, leaving at
    least one), drawn with numpy's default_rng(seed) from the sorted distinct prompts; every row of a
    held-out prompt leaves the training rows."""
    unique = sorted(set(prompts))
    if len(unique) < 2:
        raise InputError(f"{len(unique)} distinct prompt(s): at least 2 are needed to hold some out",
                         fix="give more prompts, or a heldout_prompts file")
    n = min(len(unique) - 1, max(1, round(fraction * len(unique))))
    held = {unique[i] for i in np.random.default_rng(seed).permutation(len(unique))[:n]}
    return [p for p in prompts if p not in held], [p for p in unique if p in held]


def plan(run: RunConfig, p: Planner) -> None:
    """Read the `models` section: it sets the run's base model, prompts and stage defaults."""
    where = f"{p.where}.models"
    byo = from_dict(ModelsSection, run.models, where)
    if not byo.base:
        raise InputError("models.base is required", f"{where}.base", "a model name or folder")
    if byo.prompts is None:
        raise InputError("models.prompts is required", f"{where}.prompts",
                         "a JSONL file with a `prompt` field (see examples/)")
    if not 0 < byo.heldout_fraction < 1:
        raise InputError("heldout_fraction must be between 0 and 1", f"{where}.heldout_fraction")
    check_chat_template_mode(byo.chat_template, f"{where}.chat_template")
    check_file(byo.prompts, f"{where}.prompts")
    check_file(byo.heldout_prompts, f"{where}.heldout_prompts")
    p.setting, p.base = byo, byo.base
    p.prompts = str(p.stage_dir(NAME) / ARTIFACTS["train_prompts"])
    cfg = Config(byo.prompts, byo.heldout_prompts, byo.heldout_fraction)
    p.add(NAME, cfg, {k: Path(v) for k, v in (("prompts", cfg.prompts), ("heldout_prompts", cfg.heldout_prompts))
                      if v is not None})


def run(cfg: Config, ctx: Context) -> Results:
    rows = prompt_list(cfg.prompts)
    if cfg.heldout_prompts is not None:
        train, heldout = rows, prompt_list(cfg.heldout_prompts)
    else:
        train, heldout = split_heldout(rows, cfg.heldout_fraction, ctx.seed)
    if not train or not heldout:
        raise InputError("no training or no held-out prompts", cfg.heldout_prompts or cfg.prompts,
                         "each file needs at least one row with a `prompt`")
    write_jsonl(ctx.out / ARTIFACTS["train_prompts"], ({"prompt": p} for p in train))
    write_jsonl(ctx.out / ARTIFACTS["heldout_prompts"], ({"prompt": p} for p in heldout))
    return Results(PromptsSection(train=len(train), heldout=len(heldout),
                                  heldout_from="file" if cfg.heldout_prompts is not None else "split"))
