"""Run every side-by-side benchmark at both scales; regenerate docs/BENCHMARKS.md and docs/benchmarks.json.

    python bench/run_all.py [--world DIR] [--scales tiny,135m] [--repeats 3] [--only ppo,score]
                            [--threads 1] [--demo-run RUN]

Each benchmark script runs one side (rewardlab or one peer) per process (bench/common.py), so the
peak RSS it reports is that side's alone. For every benchmark and scale this runner first runs the
script's untimed `--side prepare`, then `repeats` rounds; each round runs rewardlab and every peer
once, in alternating order (round 0: rewardlab first, round 1: rewardlab last, ...), so slow drifts
of a shared machine's load hit both. The ratio of a round is rewardlab's throughput divided by the
peer's in that round; a row reports the median over rounds and every round's value, and the
highest peak RSS of each side over its rounds. Every side gets OMP_WAIT_POLICY=PASSIVE and the same
`--threads`.

docs/benchmarks.json is a list of rows, one per benchmark, scale and peer:
  {benchmark: ppo|score|acts|sae, scale: tiny|135m, peer, median_ratio (rewardlab / peer), runs
   (each round's ratio), peak_rss_mb: {rewardlab: MiB, peer: MiB}, throughput: {rewardlab, peer}
   (medians, in `unit`), unit, target, met, model, threads, command, measured (date), versions (the
   packages installed when it was measured: the header names a kept row's versions that differ from today's),
   [fvu, dead_fraction: {rewardlab, peer} medians (sae; held-out), fvu_runs: each round's FVU per side; round i
   trains with --seed i], [check_max_rel_diff (score, acts)]}
A benchmark without a peer (value: no other library computes Monte Carlo value targets) has one row
per scale with peer "none", its wall time against a stated workload and time limit instead of a ratio:
  {benchmark: value, scale: tiny, peer: none, median_seconds, runs (each round's seconds),
   peak_rss_mb: {rewardlab}, throughput: {rewardlab}, unit, target (the workload and limit, in words),
   target_seconds, workload: {prefixes, k, models} (what was run), met (the target's workload, median
   under target_seconds), model, threads, command, measured, versions}
With --only or --scales, rows of the benchmarks and scales not rerun are kept from the existing
JSON. The notes after the generated table of BENCHMARKS.md are kept as they are; with --demo-run,
the stage timings of that finished demo run (from each stage's manifest) replace them.
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
END_MARK = "<!-- end of the generated part: everything below is kept by bench/run_all.py -->"

# name -> script, sides (rewardlab first), per-scale arguments, what the ratio means, target ratio
BENCHMARKS = {
    "ppo": dict(script="bench/ppo_throughput.py", sides=["rewardlab", "trl_rloo", "trl_grpo"],
                args={"tiny": ["--world", "{world}", "--steps", "4", "--batch", "64", "--max-new-tokens", "32"],
                      "135m": ["--world", "{world}", "--steps", "2", "--batch", "8", "--max-new-tokens", "32"]},
                what="PPO samples/s (same model, reward, batch, lengths, 1 pass, KL to a frozen reference)",
                target=2.0),
    "score": dict(script="bench/score_throughput.py", sides=["rewardlab", "trl_dpo"],
                  args={"tiny": ["--pairs", "512", "--batch", "32"], "135m": ["--pairs", "32", "--batch", "16"]},
                  what="implicit-reward scoring tokens/s (sequence log-probs, same batches)", target=1.5),
    "acts": dict(script="bench/acts_throughput.py", sides=["rewardlab", "tl_hooked_stop", "tl_bridge_stop", "nnsight"],
                 args={"tiny": ["--batch", "8", "--n-batches", "4"], "135m": ["--batch", "4", "--n-batches", "1"]},
                 what="activation caching tokens/s, one residual site, seq 128", target=3.0),
    "sae": dict(script="bench/sae_throughput.py", sides=["rewardlab", "saelens"],
                # tiny: each side at its best lr over seeds 0-2 on an equal grid (docs/FINDINGS.md, "the SAE step's CPU
                # scans through numpy"; activations of the demo's tiny world); 135m: 30 steps at the common 1e-3
                args={"tiny": ["--world", "{world}", "--steps", "300", "--lr", "1.7e-2", "--peer-lr", "6e-3"],
                      "135m": ["--world", "{world}", "--steps", "30"]},
                seed_per_round=True,  # round i trains with --seed i: the FVU medians span seeds
                what="SAE training tokens/s (BatchTopK, 4x, k 16, batch 1024, one pass), FVU no worse", target=3.0),
    "value": dict(script="bench/value_targets.py", sides=["rewardlab"],
                  args={"tiny": ["--world", "{world}", "--prefixes", "256", "--k", "16"]},
                  what="Monte Carlo value targets, wall seconds (no peer)",
                  target="256 prefixes x 2 models at K=16 under 3 minutes", target_seconds=180,
                  workload={"prefixes": 256, "k": 16, "models": 2}),
}
PEERS = {"trl_rloo": "TRL RLOOTrainer", "trl_grpo": "TRL GRPOTrainer", "trl_dpo": "TRL DPO log-probs",
         "tl_hooked_stop": "TransformerLens HookedTransformer (stop_at_layer)",
         "tl_bridge_stop": "TransformerLens TransformerBridge (stop_at_layer)", "nnsight": "nnsight trace (stop)",
         "saelens": "SAELens BatchTopK trainer"}


def last_json(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON line in the output:\n{stdout[-2000:]}")


def run_side(command: list[str]) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=3600, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return last_json(proc.stdout)


def side_order(sides: list[str], round_: int) -> list[str]:
    """Round 0 runs rewardlab first, round 1 last, and so on."""
    return list(sides) if round_ % 2 == 0 else list(reversed(sides))


def _max_rel_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(1.0, abs(y)) for x, y in zip(a, b))


def solo_row(name: str, scale: str, rounds: list[dict[str, dict]], command: str, date: str) -> dict:
    """rounds: one {"rewardlab": its JSON line} per round -> the row of a benchmark without a peer."""
    spec = BENCHMARKS[name]
    ours = [r["rewardlab"] for r in rounds]
    seconds = [o["seconds"] for o in ours]
    median = statistics.median(seconds)
    workload = {k: ours[0].get(k) for k in spec["workload"]}
    return {"benchmark": name, "scale": scale, "peer": "none", "median_seconds": round(median, 2),
            "runs": [round(x, 2) for x in seconds], "peak_rss_mb": {"rewardlab": max(o["peak_rss_mb"] for o in ours)},
            "throughput": {"rewardlab": round(statistics.median(o["throughput"] for o in ours), 2)},
            "unit": ours[0]["unit"], "target": spec["target"], "target_seconds": spec["target_seconds"],
            "workload": workload, "model": ours[0].get("model", ""), "threads": ours[0].get("threads"),
            "command": command, "measured": date,
            "met": workload == spec["workload"] and median < spec["target_seconds"]}


def build_rows(name: str, scale: str, rounds: list[dict[str, dict]], command: str, date: str) -> list[dict]:
    """rounds: one {side: that side's JSON line} per round -> one row per peer (see the module docstring)."""
    spec, rows = BENCHMARKS[name], []
    if len(spec["sides"]) == 1:
        return [solo_row(name, scale, rounds, command, date)]
    ours = [r["rewardlab"] for r in rounds]
    for peer in spec["sides"][1:]:
        theirs = [r[peer] for r in rounds]
        ratios = [o["throughput"] / t["throughput"] for o, t in zip(ours, theirs)]
        median = statistics.median(ratios)
        rss = {"rewardlab": max(o["peak_rss_mb"] for o in ours), "peer": max(t["peak_rss_mb"] for t in theirs)}
        row = {"benchmark": name, "scale": scale, "peer": peer, "median_ratio": round(median, 3),
               "runs": [round(r, 3) for r in ratios], "peak_rss_mb": rss,
               "throughput": {"rewardlab": round(statistics.median(o["throughput"] for o in ours), 2),
                              "peer": round(statistics.median(t["throughput"] for t in theirs), 2)},
               "unit": ours[0]["unit"], "target": spec["target"], "model": ours[0].get("model", ""),
               "threads": ours[0].get("threads"), "command": command, "measured": date}
        met = median >= spec["target"] and rss["rewardlab"] <= rss["peer"]
        if "fvu" in ours[0]:
            fvu = {"rewardlab": statistics.median(o["fvu"] for o in ours), "peer": statistics.median(t["fvu"] for t in theirs)}
            row["fvu"] = {side: round(value, 4) for side, value in fvu.items()}
            row["fvu_runs"] = {"rewardlab": [round(o["fvu"], 5) for o in ours], "peer": [round(t["fvu"], 5) for t in theirs]}
            met = met and fvu["rewardlab"] <= fvu["peer"]  # unrounded: a tie at 4 decimals is decided by the medians
        if "dead_fraction" in ours[0]:
            row["dead_fraction"] = {"rewardlab": round(statistics.median(o["dead_fraction"] for o in ours), 3),
                                    "peer": round(statistics.median(t["dead_fraction"] for t in theirs), 3)}
        if "check" in ours[0]:
            row["check_max_rel_diff"] = max(_max_rel_diff(o["check"], t["check"]) for o, t in zip(ours, theirs))
        row["met"] = met
        rows.append(row)
    return rows


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """The new rows, plus the old rows of every (benchmark, scale) not rerun; in BENCHMARKS order."""
    rerun = {(r["benchmark"], r["scale"]) for r in new}
    rows = [r for r in old if (r["benchmark"], r["scale"]) not in rerun] + new
    order = {name: i for i, name in enumerate(BENCHMARKS)}
    sides = {name: spec["sides"] for name, spec in BENCHMARKS.items()}
    return sorted(rows, key=lambda r: (order[r["benchmark"]], r["scale"] != "tiny",
                                       sides[r["benchmark"]].index(r["peer"]) if r["peer"] in sides[r["benchmark"]]
                                       else 0))


def table_line(r: dict) -> str:
    rss = r["peak_rss_mb"]
    if r["peer"] == "none":
        return (f"| {r['benchmark']} | {r['scale']} | none | **{r['median_seconds']:.1f} s** | "
                f"{', '.join(f'{v:.1f}' for v in r['runs'])} s | {r['throughput']['rewardlab']:,.1f} {r['unit']} | "
                f"{rss['rewardlab']:.0f} | {r['target']}: {'met' if r['met'] else '**not met**'} | `{r['command']}` |")
    fvu = f"; FVU {r['fvu']['rewardlab']:.4f} vs {r['fvu']['peer']:.4f}" if "fvu" in r else ""
    if "dead_fraction" in r:
        fvu += f", dead latents {r['dead_fraction']['rewardlab']:.2f} vs {r['dead_fraction']['peer']:.2f}"
    return (f"| {r['benchmark']} | {r['scale']} | {PEERS.get(r['peer'], r['peer'])} | **{r['median_ratio']:.2f}x** | "
            f"{', '.join(f'{v:.2f}' for v in r['runs'])} | {r['throughput']['rewardlab']:,.1f} vs "
            f"{r['throughput']['peer']:,.1f} {r['unit']}{fvu} | {rss['rewardlab']:.0f} vs {rss['peer']:.0f} | "
            f">= {r['target']:g}x, RSS <= peer{', FVU <= peer' if 'fvu' in r else ''}: "
            f"{'met' if r['met'] else '**not met**'} | `{r['command']}` |")


def render(rows: list[dict], header: list[str], tail: str) -> str:
    lines = header + ["", "| benchmark | scale | peer | median ratio | runs | throughput (rewardlab vs peer) | "
                      "peak RSS MiB (rewardlab vs peer) | target | command |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [table_line(r) for r in rows]
    lines += ["", END_MARK]
    return "\n".join(lines) + (tail or "\n")


def kept_tail(doc: Path) -> str:
    """What follows the generated part of an existing BENCHMARKS.md (from its first section heading if
    it has no end mark)."""
    if not doc.is_file():
        return ""
    text = doc.read_text()
    if END_MARK in text:
        return text.split(END_MARK, 1)[1]
    return "\n## " + text.split("\n## ", 1)[1] if "\n## " in text else ""


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    sys.path.insert(0, str(ROOT / "bench"))
    from common import use_extra_site

    use_extra_site()  # nnsight lives in .cache/bench/site
    out = {}
    for pkg in ("rewardlab", "torch", "transformers", "trl", "sae-lens", "transformer-lens", "nnsight"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def versions_line(now: dict[str, str], rows: list[dict]) -> str:
    """The packages installed now, then each package version that rows were measured with (their `versions`)
    and that is not installed now or not at that version, with those rows' dates."""
    older: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        for pkg, v in r.get("versions", {}).items():
            if now.get(pkg) != v:
                older.setdefault((pkg, v), set()).add(r["measured"])
    line = ", ".join(f"{k} {v}" for k, v in now.items())
    for (pkg, v), dates in sorted(older.items()):
        status = "not installed for this regeneration" if pkg not in now else f"{now[pkg]} now"
        line += f"; {pkg} {v} in the rows measured with it ({', '.join(sorted(dates))}; {status})"
    return line


def header_lines(threads: int, machine_note: str, rows: list[dict]) -> list[str]:
    return [
        "# Benchmarks", "",
        f"Regenerated by `python bench/run_all.py` on {time.strftime('%Y-%m-%d')} (rows of benchmarks not rerun keep "
        "their own date in docs/benchmarks.json). Each ratio is rewardlab's throughput divided by the peer's; every "
        "side runs in its own process (its peak RSS is `ru_maxrss` of that process: imports, model and work), "
        "rewardlab and the peers alternate within each round, and a row shows the median over rounds and every "
        "round's ratio. The same rows are in `docs/benchmarks.json`: `peak_rss_mb` there is a dict "
        "`{rewardlab, peer}` in MiB, the highest over the rounds. A benchmark without a peer (peer none) shows "
        "its median wall seconds where the others show a ratio, and its time limit as the target.", "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        f"{threads} torch thread(s) and OMP_WAIT_POLICY=PASSIVE on every side; {machine_note}",
        f"- python {platform.python_version()}; " + versions_line(versions(), rows),
        "- scales: tiny = the review world's model (PPO, SAE activations) or a random model of today's sizes "
        "(scoring: 4 x 128 GPT-2; caching: 12 x 256 GPT-2); 135m = SmolLM2-135M-Instruct (real weights where "
        "scripts/setup-real-model.sh installed it, else a random LlamaForCausalLM of its config; the model column "
        "of docs/benchmarks.json says which)",
    ]


def measure(name: str, scale: str, world: str, repeats: int, threads: int) -> list[dict]:
    spec = BENCHMARKS[name]
    args = [a.format(world=world) for a in spec["args"][scale]] + ["--scale", scale, "--threads", str(threads)]
    print(f"{name} {scale}: {run_side([spec['script'], *args, '--side', 'prepare'])}", flush=True)
    rounds = []
    for i in range(repeats):
        t0, got = time.perf_counter(), {}
        seed = ["--seed", str(i)] if spec.get("seed_per_round") else []
        for side in side_order(spec["sides"], i):
            got[side] = run_side([spec["script"], *args, *seed, "--side", side])
        rounds.append(got)
        print(f"{name} {scale} round {i}: " + ", ".join(f"{s} {g['throughput']:.1f} {g['unit']} "
                                                     f"{g['peak_rss_mb']:.0f} MiB" for s, g in got.items())
              + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    command = f"python {spec['script']} {' '.join(args)}{' --seed ROUND' if spec.get('seed_per_round') else ''} --side SIDE"
    rows = build_rows(name, scale, rounds, command, time.strftime("%Y-%m-%d"))
    installed = versions()  # what the rows were measured with: a later regeneration may lack a peer's package
    return [dict(r, versions=installed) for r in rows]


def demo_section(run: Path) -> str:
    rows = [json.loads(m.read_text()) for m in sorted(run.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)]
    lines = ["", f"## Demo stage timings (`{run}`)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {m['stage']} | {float(m['seconds']):.0f} |" for m in rows]
    lines.append(f"| total | {sum(float(m['seconds']) for m in rows):.0f} |")
    return "\n".join(lines) + "\n"


def write(new: list[dict], json_path: Path, doc: Path, threads: int, machine_note: str, demo_run: str | None) -> None:
    """Merge `new` into the rows of json_path and regenerate both files."""
    rows = merge_rows(json.loads(json_path.read_text()) if json_path.is_file() else [], new)
    json_path.write_text(json.dumps(rows, indent=1) + "\n")
    doc.write_text(render(rows, header_lines(threads, machine_note, rows),
                          demo_section(Path(demo_run)) if demo_run else kept_tail(doc)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default=None, help="a built review world (default: build the tiny one)")
    ap.add_argument("--scales", default="tiny,135m")
    ap.add_argument("--repeats", type=int, default=3, help="rounds per benchmark and scale")
    ap.add_argument("--only", default=None, help="comma-separated subset of " + ",".join(BENCHMARKS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every side")
    ap.add_argument("--machine-note", default="the machine was otherwise idle",
                    help="what else ran on the machine during the measurements")
    ap.add_argument("--demo-run", default=None, help="a finished demo run folder, for stage timings")
    ap.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    ap.add_argument("--json", default=str(ROOT / "docs" / "benchmarks.json"))
    a = ap.parse_args()
    world = a.world or str(ROOT / ".cache" / "bench-world")
    if not (Path(world) / "world.json").is_file():
        subprocess.run([sys.executable, "-m", "rewardlab.cli", "world", "build", "--out", world], check=True)
    for name in a.only.split(",") if a.only else BENCHMARKS:
        for scale in (s for s in a.scales.split(",") if s in BENCHMARKS[name]["args"]):  # value: tiny only
            # write after each, so an interrupted run keeps what it measured
            write(measure(name, scale, world, a.repeats, a.threads), Path(a.json), Path(a.out), a.threads,
                  a.machine_note, a.demo_run)
    print(f"-> {a.out}, {a.json}")


if __name__ == "__main__":
    main()
