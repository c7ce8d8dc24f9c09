"""PPO on several tiny review worlds: the world targets of issue 22 (gain >= 1.5 base std, KL <= 8 nats,
grammatical rate >= 0.85) checked on each world seed, for any PPO settings.

    python scripts/ppo-world-seeds.py --worlds WORLDS --out RUNS --name NAME [--seeds 0,1,2,3,4] [--jobs 1] \
        [--preset tiny] [-- PPO FLAGS ...]

For each seed S: builds the tiny world once into WORLDS/tiny/seed-S (`rewardlab world build --preset tiny
--seed S`; a folder holding world.json is reused, and a build under way in another invocation is
waited for), then trains PPO into RUNS/NAME/seed-S with
`rewardlab train ppo --base WORLDS/tiny/seed-S/base --reward utility --seed S` plus the PPO flags given after
`--` (none: PPO at its defaults). This is what `rewardlab run` does with `seed: S`, `world: {preset:
tiny}` and `ppo: {reward: utility}`: the pipeline's PPO stage trains on the world's base and prompts with
the run's seed. A run folder holding summary.json is reused. `--jobs N` runs N seeds at a time (each
process uses one torch thread; set OMP_WAIT_POLICY=PASSIVE on a shared machine).

Prints one row per seed (figures from RUNS/NAME/seed-S/summary.json, over `eval_samples` held-out
samples, CIs bootstrap 95%) and writes the rows to RUNS/NAME/table.json.

Beside each run, the reward's KL-optimal policy on that world (`rewardlab.rl.frontier`: the base tilted by
exp(reward / beta), what PPO's KL-penalized objective aims at), from `--frontier-samples` base samples of each
of `--frontier-prompts` prompts (drawn with the world seed; kept in WORLDS/seed-S.frontier.safetensors):
its gain and grammatical rate at the run's KL, and its KL and grammatical rate at the target gain. Where
that optimum meets the targets and the run does not, the run's path, not the objective, missed them.
`--frontier-prompts 0` skips it.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# issue 22's world targets
MIN_GAIN, MAX_KL, MIN_GRAMMATICAL = 1.5, 8.0, 0.85
MIN_ESS = 10  # effective base samples per prompt below which a frontier point is flagged (rl.frontier's bias)


def rewardlab(*args: str, log: Path) -> None:
    """Run the rewardlab CLI of this checkout with `args`, its output into `log`; stop on failure."""
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
               PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, "-m", "rewardlab", *args], stdout=f, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"rewardlab {' '.join(args)} failed (exit {done.returncode}); see {log}")


def one_seed(seed: int, worlds: Path, runs: Path, ppo_flags: list[str], preset: str) -> dict:
    """Build (or reuse) world `seed`, train (or reuse) its PPO run; its table row."""
    world, run = worlds / f"seed-{seed}", runs / f"seed-{seed}"
    worlds.mkdir(parents=True, exist_ok=True)
    with open(worlds / f"seed-{seed}.lock", "w") as lock:  # another invocation building this world: wait for it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (world / "world.json").is_file():
            rewardlab("world", "build", "--out", str(world), "--preset", preset, "--seed", str(seed),
                      log=worlds / f"seed-{seed}.log")
    if not (run / "summary.json").is_file():
        rewardlab("train", "ppo", "--base", str(world / "base"), "--reward", "utility", "--seed", str(seed),
                  "--out", str(run), *ppo_flags, log=runs / f"seed-{seed}.log")
    return row(seed, run)


def row(seed: int, run: Path) -> dict:
    """The table row of a finished run folder."""
    s = json.loads((run / "summary.json").read_text())
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line][-1]
    gain, kl, gram = s["reward_gain_base_std"], s["kl_exact_ci"], s["grammatical_rate_ci"]
    return {"seed": seed, "gain": gain, "kl": kl, "grammatical": gram,
            "grammatical_base": s["grammatical_rate_base"], "reward_base": s["reward_base"],
            "reward_policy": s["reward_policy"], "kl_coef_last": last["kl_coef"], "seconds": s["seconds"],
            "n": s["n_eval"],
            "meets": gain >= MIN_GAIN and kl["value"] <= MAX_KL and gram["value"] >= MIN_GRAMMATICAL}


def optimum(worlds: Path, r: dict, n_prompts: int, per_prompt: int) -> dict:
    """The KL-optimal policy of world r["seed"]'s reward at the run's KL and at the target gain (module docstring)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import torch
    from safetensors.torch import load_file, save_file

    from rewardlab.rl.config import PPOConfig
    from rewardlab.rl.frontier import beta_for, frontier_point
    from rewardlab.rl.sweep import base_samples

    seed = r["seed"]
    path = worlds / f"seed-{seed}.frontier-{n_prompts}x{per_prompt}.safetensors"
    if not path.is_file():  # the base's samples under PPO's sampling defaults, prompts and samples drawn with the seed
        samples = base_samples(PPOConfig(base=str(worlds / f"seed-{seed}" / "base"), reward="utility", seed=seed),
                               n_prompts, per_prompt)
        save_file({k: torch.from_numpy(v) for k, v in samples.items()}, str(path))
    samples = {k: v.numpy() for k, v in load_file(str(path)).items()}
    return {name: frontier_point(samples["rewards"], beta_for(samples["rewards"], **target),
                                 {"grammatical": samples["grammatical"]}).to_dict()
            for name, target in (("at_run_kl", {"kl": r["kl"]["value"]}), ("at_target_gain", {"gain": MIN_GAIN}))}


def ci(e: dict, digits: int) -> str:
    return f"{e['value']:.{digits}f} [{e['ci'][0]:.{digits}f}, {e['ci'][1]:.{digits}f}]"


def table(rows: list[dict]) -> str:
    lines = ["| world seed | gain (base std) | KL exact (nats) | grammatical rate | grammatical, base | "
             "mean reward base -> policy | final kl_coef | seconds | meets targets |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['gain']:.2f} | {ci(r['kl'], 2)} | {ci(r['grammatical'], 3)} | "
                     f"{r['grammatical_base']:.3f} | {r['reward_base']:.2f} -> {r['reward_policy']:.2f} | "
                     f"{r['kl_coef_last']:.3f} | {r['seconds']:.0f} | {'yes' if r['meets'] else 'no'} |")
    met = sum(r["meets"] for r in rows)
    lines.append(f"\n{met} of {len(rows)} worlds meet gain >= {MIN_GAIN}, KL <= {MAX_KL:g}, "
                 f"grammatical >= {MIN_GRAMMATICAL} (n = {rows[0]['n']} samples each)")
    if all("optimum" in r for r in rows):
        lines += ["", f"The KL-optimal policy (the base tilted by exp(reward / beta)), from {rows[0]['optimum']['at_run_kl']['kl']['n']}"
                  " prompts' base samples:", "",
                  "| world seed | at the run's KL: gain | grammatical | at gain 1.5: KL (nats) | grammatical | ESS per prompt |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            at_kl, at_gain = r["optimum"]["at_run_kl"], r["optimum"]["at_target_gain"]
            lines.append(f"| {r['seed']} | {ci(at_kl['gain'], 2)} | {ci(at_kl['grammatical'], 3)} | "
                         f"{ci(at_gain['kl'], 2)} | {ci(at_gain['grammatical'], 3)} | "
                         f"{at_kl['ess']:.0f}, {at_gain['ess']:.0f}{' (low: leans to the base)' if min(at_kl['ess'], at_gain['ess']) < MIN_ESS else ''} |")
    return "\n".join(lines)


def main() -> None:
    argv = sys.argv[1:]
    ppo_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worlds", required=True, help="folder of the built worlds (seed-S), reused")
    p.add_argument("--out", required=True, help="folder of the PPO runs")
    p.add_argument("--name", required=True, help="name of these PPO settings: runs go to OUT/NAME/seed-S")
    p.add_argument("--seeds", default="0,1,2,3,4", help="world seeds, comma-separated (default 0,1,2,3,4)")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at a time")
    p.add_argument("--preset", default="tiny", choices=["micro", "tiny"],
                   help="world preset (micro: a quick check of this script; the targets are the tiny world's)")
    p.add_argument("--frontier-prompts", type=int, default=64, help="prompts of the KL-optimal frontier (0: skip it)")
    p.add_argument("--frontier-samples", type=int, default=512, help="base samples per prompt for the frontier")
    a = p.parse_args(argv)
    try:
        seeds = [int(s) for s in a.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds must be integers separated by commas, got {a.seeds!r}")
    runs = Path(a.out) / a.name
    runs.mkdir(parents=True, exist_ok=True)
    flags_file = runs / "ppo_flags.json"
    if flags_file.is_file() and json.loads(flags_file.read_text()) != ppo_flags:
        p.error(f"{runs} holds runs with other PPO flags ({' '.join(json.loads(flags_file.read_text()))}); "
                "use another --name")
    flags_file.write_text(json.dumps(ppo_flags))
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        rows = list(pool.map(lambda s: one_seed(s, Path(a.worlds) / a.preset, runs, ppo_flags, a.preset), seeds))
    if a.frontier_prompts > 0:
        for r in rows:
            r["optimum"] = optimum(Path(a.worlds) / a.preset, r, a.frontier_prompts, a.frontier_samples)
    (runs / "table.json").write_text(json.dumps(rows, indent=1))
    print(f"PPO settings {a.name!r}: {' '.join(ppo_flags) or 'defaults'}")
    print(table(rows))


if __name__ == "__main__":
    main()
