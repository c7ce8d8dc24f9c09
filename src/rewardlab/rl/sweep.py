"""Reward-KL frontier: PPO at several KL coefficients, true reward against exact KL to the base.

Writes one PPO run per coefficient into OUT/kl_{coef}/ (each resumable), then OUT/frontier.jsonl
and OUT/frontier.md (a table); `report.figures.frontier` draws it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from rewardlab.errors import InputError
from rewardlab.io import atomic_path, write_jsonl
from rewardlab.rl.config import PPOConfig
from rewardlab.rl.ppo import train_ppo

COLUMNS = ("kl_coef", "reward_policy", "reward_base", "kl_exact", "grammatical_rate", "seconds")


def sweep_kl(cfg: PPOConfig, kl_coefs: Sequence[float], out: str | Path) -> str:
    """Train PPO at each KL coefficient; returns the frontier as a Markdown table."""
    bad = [c for c in kl_coefs if not c >= 0]
    if bad or not kl_coefs:
        raise InputError(f"KL coefficients must be at least 0, got {bad}" if bad else "no KL coefficient given",
                         "kl_coefs", "e.g. --kl-coefs 0.03,0.1,0.3,1")
    for coef in kl_coefs:  # every run's config is checked before the first one trains
        dataclasses.replace(cfg, kl_coef=coef).validate()
    out = Path(out)
    rows = []
    for coef in kl_coefs:
        summary = train_ppo(dataclasses.replace(cfg, kl_coef=coef), out / f"kl_{coef:g}")
        rows.append({"kl_coef": coef, **{k: summary.get(k) for k in COLUMNS[1:]},
                     "reward_mean": summary["reward_policy_ci"]})  # the policy's mean reward: value, ci, n
    write_jsonl(out / "frontier.jsonl", rows)
    table = "\n".join(
        ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        + ["| " + " | ".join("-" if r[c] is None else f"{r[c]:.3g}" for c in COLUMNS) + " |" for r in rows])
    with atomic_path(out / "frontier.md") as tmp:
        tmp.write_text(table + "\n", encoding="utf-8")
    return table
