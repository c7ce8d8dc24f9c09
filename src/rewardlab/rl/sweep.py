"""Reward-KL frontier: PPO at several KL coefficients, true reward against exact KL to the base.

Writes one PPO run per coefficient into OUT/kl_{coef}/ (each resumable), then OUT/frontier.jsonl
and OUT/frontier.md (a table); `report.figures.frontier` draws it.

With `parallel_runs` > 1 the runs train at once, that many at a time, each in its own Python process
(`python -m rewardlab.rl.sweep CONFIG_JSON OUT/kl_{coef}`, its output in OUT/kl_{coef}.log): PPO on a small
model keeps one core busy (its `threads` setting), so on a machine with more the runs share the cores
instead of taking turns. A run's numbers do not depend on where it trains; its `seconds` do.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from rewardlab import distributed
from rewardlab.config import from_dict
from rewardlab.errors import InputError
from rewardlab.io import atomic_path, read_json, write_jsonl
from rewardlab.processes import Child, child_main
from rewardlab.rl.config import PPOConfig
from rewardlab.rl.ppo import train_ppo

COLUMNS = ("kl_coef", "reward_policy", "reward_base", "kl_exact", "grammatical_rate", "seconds")


def _count_lines(path: Path) -> int:
    return sum(1 for _ in path.open("rb")) if path.is_file() else 0


def train_in_processes(configs: dict[Path, PPOConfig], parallel_runs: int) -> dict[Path, dict]:
    """{run folder: summary} of `train_ppo(config, folder)` for each entry, `parallel_runs` at a time, each in its
    own Python process writing folder.log (`rewardlab.processes`); a bar over all runs' phases (read from their
    metrics.jsonl). A run that fails stops the others and raises with the end of its log."""
    waiting, running = list(configs.items()), {}
    bar = tqdm(total=sum(c.phases for c in configs.values()), desc=f"PPO runs ({parallel_runs} at a time)",
               unit="phase")
    try:
        while waiting or running:
            while waiting and len(running) < parallel_runs:
                folder, cfg = waiting.pop(0)
                folder.mkdir(parents=True, exist_ok=True)
                running[folder] = Child.start("rewardlab.rl.sweep", [json.dumps(dataclasses.asdict(cfg)), str(folder)],
                                              folder.with_name(folder.name + ".log"))
            time.sleep(0.5)
            bar.n = sum(_count_lines(folder / "metrics.jsonl") for folder in configs)
            bar.refresh()
            for folder, child in list(running.items()):
                if not child.running():
                    del running[folder]
                    child.finish(f"the PPO run in {folder}")
    finally:
        for child in running.values():
            child.kill()
        bar.close()
    return {folder: read_json(folder / "summary.json") for folder in configs}


def check_sweep(kl_coefs: Sequence[float], parallel_runs: int = 1) -> None:
    """Raise InputError unless the coefficients are at least 0, one or more, none repeated, and parallel_runs >= 1."""
    bad = [c for c in kl_coefs if not c >= 0]
    if bad or not kl_coefs:
        raise InputError(f"KL coefficients must be at least 0, got {bad}" if bad else "no KL coefficient given",
                         "kl_coefs", "e.g. --kl-coefs 0.03,0.1,0.3,1")
    if len({f"{c:g}" for c in kl_coefs}) < len(kl_coefs):
        raise InputError(f"KL coefficients {list(kl_coefs)} repeat one (each trains into kl_<coef>)", "kl_coefs",
                         "give each coefficient once")
    if parallel_runs < 1:
        raise InputError(f"parallel_runs must be at least 1, got {parallel_runs}", "parallel_runs",
                         "1 trains the runs one after another")


def sweep_kl(cfg: PPOConfig, kl_coefs: Sequence[float], out: str | Path, parallel_runs: int = 1) -> str:
    """Train PPO at each KL coefficient, `parallel_runs` at a time (module docstring); returns the frontier as a
    Markdown table."""
    check_sweep(kl_coefs, parallel_runs)
    for coef in kl_coefs:  # every run's config is checked before the first one trains
        dataclasses.replace(cfg, kl_coef=coef).validate()
    out = Path(out)
    configs = {out / f"kl_{coef:g}": dataclasses.replace(cfg, kl_coef=coef) for coef in kl_coefs}
    if parallel_runs > 1 and len(configs) > 1 and distributed.rank_and_world()[1] == 1:
        summaries = train_in_processes(configs, parallel_runs)
    else:
        summaries = {folder: train_ppo(c, folder) for folder, c in configs.items()}
    rows = []
    for coef, summary in zip(kl_coefs, summaries.values()):
        rows.append({"kl_coef": coef, **{k: summary.get(k) for k in COLUMNS[1:]},
                     "reward_mean": summary["reward_policy_ci"]})  # the policy's mean reward: value, ci, n
    write_jsonl(out / "frontier.jsonl", rows)
    table = "\n".join(
        ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        + ["| " + " | ".join("-" if r[c] is None else f"{r[c]:.3g}" for c in COLUMNS) + " |" for r in rows])
    with atomic_path(out / "frontier.md") as tmp:
        tmp.write_text(table + "\n", encoding="utf-8")
    return table


if __name__ == "__main__":  # one run of `train_in_processes`: python -m rewardlab.rl.sweep CONFIG_JSON OUT
    child_main(lambda: train_ppo(from_dict(PPOConfig, json.loads(sys.argv[1]), "PPO config"), sys.argv[2],
                                 progress=False))
