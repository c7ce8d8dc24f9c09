"""Run every side-by-side benchmark several times and regenerate docs/BENCHMARKS.md.

    python bench/run_all.py [--world DIR] [--repeats 3] [--demo-run RUN]

Each benchmark script prints one JSON line last; this runner takes the median ratio over
`repeats` runs, records the machine and package versions, and appends the stage timings of a
finished demo run (`--demo-run`, from each stage's manifest) when one is given. With `--only`, the
rows of the other benchmarks are kept from the existing file (each row says its own runs). Without --world it
builds the tiny review world first (the PPO benchmark trains on its base model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (command after `python`, ratio key, what the ratio means, the target)
BENCHMARKS = {
    "ppo": (["bench/ppo_throughput.py", "--base", "{world}/base", "--steps", "4"], "ratio_samples_per_s",
            "PPO samples/s, rewardlab PPO / TRL RLOOTrainer (same model, reward, batch 64, 32 tokens, 1 pass)",
            ">= 1"),
    "score": (["bench/score_throughput.py", "--pairs", "512"], "ratio",
              "implicit-reward scoring tokens/s, rewardlab / TRL DPO log-probs", "reported"),
    "acts": (["bench/acts_throughput.py", "--layers", "12", "--d-model", "256", "--batch", "8", "--n-batches", "4"],
             None, "activation caching tokens/s, rewardlab / TransformerLens and nnsight (12x256 GPT-2, layer 3)",
             ">= 2 vs each"),
    "sae": (["bench/sae_throughput.py", "--steps", "300", "--repeats", "5", "--threads", "1"], "median_ratio",
            "SAE training tokens/s, rewardlab / SAELens (BatchTopK, 4x, k 16, batch 1024, 1 thread; each run is "
            "the median of 5 alternating pairs)", ">= 1.5"),
}


def last_json(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON line in the output:\n{stdout[-2000:]}")


def run_one(command: list[str]) -> dict:
    proc = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return last_json(proc.stdout)


def ratios(name: str, result: dict, key: str | None) -> dict[str, float]:
    if key is not None:
        return {name: float(result[key])}
    return {f"{name} vs {peer}": float(row["rewardlab_speedup"])
            for peer, row in result["results"].items() if peer != "rewardlab"}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("rewardlab", "torch", "transformers", "trl", "sae-lens", "transformer-lens", "nnsight"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def demo_timings(run: Path) -> list[tuple[str, float]]:
    rows = []
    for manifest in sorted(run.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime):
        m = json.loads(manifest.read_text())
        rows.append((m["stage"], float(m["seconds"])))
    return rows


def kept_rows(doc: Path, name: str) -> list[str]:
    """The table rows of benchmark `name` in an existing BENCHMARKS.md (none if there is no file)."""
    if not doc.is_file():
        return []
    table = doc.read_text().split("\n## ")[0]  # the benchmark table, not the stage timings after it
    return [line for line in table.splitlines() if line.startswith(f"| {name} |") or line.startswith(f"| {name} vs ")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default=None, help="a built review world (default: build the tiny one)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=None, help="comma-separated subset of " + ",".join(BENCHMARKS))
    ap.add_argument("--demo-run", default=None, help="a finished demo run folder, for stage timings")
    ap.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    a = ap.parse_args()
    world = a.world
    if world is None:
        world = str(ROOT / ".cache" / "bench-world")
        if not (Path(world) / "world.json").is_file():
            subprocess.run([sys.executable, "-m", "rewardlab.cli", "world", "build", "--out", world], check=True)
    names = a.only.split(",") if a.only else list(BENCHMARKS)
    table = []
    for name in names:
        command, key, meaning, target = BENCHMARKS[name]
        command = [c.format(world=world) for c in command]
        runs = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            runs.append(ratios(name, run_one(command), key))
            print(f"{name}: {runs[-1]} ({time.perf_counter() - t0:.0f} s)", flush=True)
        for label in runs[0]:
            values = [r[label] for r in runs]
            table.append((label, meaning, statistics.median(values), values, target, " ".join(command)))
    lines = [
        "# Benchmarks",
        "",
        f"Regenerated by `python bench/run_all.py` on {time.strftime('%Y-%m-%d')}. Each ratio is rewardlab's "
        "throughput divided by the peer's, measured side by side in one run of the script; each row shows the "
        "median of its runs and every run's value.",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        f"- python {platform.python_version()}; " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        "",
        "| benchmark | what | median ratio | runs | target | command |",
        "|---|---|---|---|---|---|",
    ]
    fresh = {}
    for label, meaning, median, values, target, command in table:
        fresh[label.split(" vs ")[0]] = fresh.get(label.split(" vs ")[0], []) + [
            f"| {label} | {meaning} | **{median:.2f}x** | {', '.join(f'{v:.2f}' for v in values)} | "
            f"{target} | `python {command}` |"]
    for name in BENCHMARKS:
        lines += fresh.get(name, kept_rows(Path(a.out), name))
    if a.demo_run:
        lines += ["", f"## Demo stage timings (`{a.demo_run}`)", "", "| stage | seconds |", "|---|---|"]
        timings = demo_timings(Path(a.demo_run))
        lines += [f"| {stage} | {sec:.0f} |" for stage, sec in timings]
        lines.append(f"| total | {sum(s for _, s in timings):.0f} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
