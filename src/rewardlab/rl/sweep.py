"""Reward-KL frontier: PPO at several KL coefficients, true reward against exact KL to the base.

Writes one PPO run per coefficient into OUT/kl_{coef}/ (each resumable), then OUT/frontier.jsonl
and OUT/frontier.md (a table); `report.figures.frontier` draws it. With `optimum_prompts` > 0 it also writes
OUT/optimum.jsonl: the reward's KL-optimal policies (`rl.frontier`: the base tilted by exp(reward / beta), what
each run's objective aims at) at OPTIMUM_BETAS and at the runs' coefficients, from `optimum_samples` base samples
of each of `optimum_prompts` prompts, so that each run can be read against the best any optimizer could do.

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

import torch
from tqdm.auto import tqdm

from rewardlab import distributed, rewards
from rewardlab.config import from_dict
from rewardlab.errors import InputError
from rewardlab.io import atomic_path, read_json, write_jsonl
from rewardlab.models import pick_device
from rewardlab.processes import Child, child_main
from rewardlab.rl.config import PPOConfig
from rewardlab.rl.frontier import frontier_point, reference_samples
from rewardlab.rl.inputs import completion_length, grammar_checker, load_policy_and_tokenizer, load_prompts
from rewardlab.rl.ppo import train_ppo

COLUMNS = ("kl_coef", "reward_policy", "reward_base", "kl_exact", "grammatical_rate", "seconds")
OPTIMUM_BETAS = (0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0)  # reward units per nat: the optimum's curve


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


def check_sweep(kl_coefs: Sequence[float], parallel_runs: int = 1, optimum_prompts: int = 0,
                optimum_samples: int = 2) -> None:
    """Raise InputError unless the coefficients are at least 0, one or more, none repeated, parallel_runs >= 1,
    optimum_prompts >= 0 and optimum_samples >= 2."""
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
    if optimum_prompts < 0:
        raise InputError(f"optimum_prompts must be at least 0, got {optimum_prompts}", "optimum_prompts",
                         "0 skips the KL-optimal curve")
    if optimum_samples < 2:
        raise InputError(f"optimum_samples must be at least 2, got {optimum_samples}", "optimum_samples",
                         "a few hundred base samples per prompt (512 keep 50 effective samples at 1.5 nats)")


def base_samples(cfg: PPOConfig, n_prompts: int, per_prompt: int) -> dict:
    """`per_prompt` samples of cfg's base (the reference) for each of `n_prompts` of cfg's prompts (the first of a
    permutation seeded with cfg.seed; all of them when there are fewer), under cfg's sampling settings on cfg's
    device, scored by cfg's reward and, in the review world, the grammar: {"rewards": [P, N], "grammatical": [P, N]}
    (`rl.frontier.reference_samples`)."""
    model, tokenizer = load_policy_and_tokenizer(cfg.base, cfg.chat_template, cfg.dtype)
    model.to(pick_device(cfg.device))
    prompts = load_prompts(cfg.base, cfg.prompts)
    chosen = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(cfg.seed))[:n_prompts].tolist()
    is_grammatical = grammar_checker(cfg.base)
    measures = None if is_grammatical is None else {"grammatical": lambda t, p: is_grammatical(t, prompt=p)}
    return reference_samples(model, tokenizer, [prompts[i] for i in chosen], per_prompt,
                             rewards.get_reward(cfg.reward), measures,
                             max_new_tokens=completion_length(cfg.base, cfg.max_new_tokens),
                             temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed,
                             progress=True)


def optimum_curve(cfg: PPOConfig, betas: Sequence[float], n_prompts: int, per_prompt: int) -> list[dict]:
    """The KL-optimal policies of cfg's reward relative to cfg's base, one row per beta ({beta, reward, gain, kl,
    grammatical (review world only): Estimate dicts with CIs over prompts, ess}), from `base_samples`."""
    samples = base_samples(cfg, n_prompts, per_prompt)
    measures = {k: v for k, v in samples.items() if k != "rewards"}
    return [frontier_point(samples["rewards"], beta, measures, seed=cfg.seed).to_dict() for beta in betas]


def sweep_kl(cfg: PPOConfig, kl_coefs: Sequence[float], out: str | Path, parallel_runs: int = 1,
             optimum_prompts: int = 0, optimum_samples: int = 512) -> str:
    """Train PPO at each KL coefficient, `parallel_runs` at a time, and with `optimum_prompts` > 0 the KL-optimal
    curve (module docstring); returns the frontier as a Markdown table."""
    check_sweep(kl_coefs, parallel_runs, optimum_prompts, optimum_samples)
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
    if optimum_prompts > 0:
        betas = sorted(set(OPTIMUM_BETAS) | {c for c in kl_coefs if c > 0})
        write_jsonl(out / "optimum.jsonl", optimum_curve(cfg, betas, optimum_prompts, optimum_samples))
    table = "\n".join(
        ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        + ["| " + " | ".join("-" if r[c] is None else f"{r[c]:.3g}" for c in COLUMNS) + " |" for r in rows])
    with atomic_path(out / "frontier.md") as tmp:
        tmp.write_text(table + "\n", encoding="utf-8")
    return table


if __name__ == "__main__":  # one run of `train_in_processes`: python -m rewardlab.rl.sweep CONFIG_JSON OUT
    child_main(lambda: train_ppo(from_dict(PPOConfig, json.loads(sys.argv[1]), "PPO config"), sys.argv[2],
                                 progress=False))
