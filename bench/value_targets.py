"""Monte Carlo value targets: wall time of `value targets` for N prefixes x 2 models at K continuations.

    python bench/value_targets.py --world WORLD --side prepare|rewardlab [--scale tiny] [--prefixes 256] [--k 16]
                                  [--threads 1] [--base B --post P --records RECORDS.jsonl]

The benchmark has no peer (no other library computes these targets): bench/run_all.py runs the
`rewardlab` side only and reports its wall seconds against the target of issue 19, 256 prefixes x 2
models at K = 16 in under 180 s on 2 cores (tiny world). Tiny scale only.

`--side prepare` (untimed) samples one completion of each of the world's first 128 training prompts
from the world's base (seed 0, 32 new tokens) into `--records` (default
.cache/bench/value-records-tiny.jsonl), unless that file was given and exists. The timed side cuts the records into prefixes at the default positions
(last_prompt and completion offsets 0, 2, 5, 10), keeps the first `--prefixes`, and estimates V for
both models (`value.targets.monte_carlo_values`, K continuations each) and R for the prefixes.
Models: `--base` (default WORLD/base) and `--post` (default: the base again; the cost depends on the
architecture and on how long the continuations run, not on the weights; pass a PPO policy to time the
pair the study uses). Prints the machine's load average before and after (the machine may be shared),
then one JSON line (bench/common.py's protocol): throughput in continuations/s, seconds, prefixes, k.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, add_common_args, emit, prepared, setup  # noqa: E402

SIDES = ["rewardlab"]
N_RECORDS = 128  # prepared records: up to 5 prefixes each


def records_path(scale: str) -> Path:
    return ROOT / ".cache" / "bench" / f"value-records-{scale}.jsonl"


def prepare_records(base: str, world: str, out: Path) -> int:
    """One base-model completion of each of the world's first N_RECORDS training prompts, written to `out`."""
    from rewardlab.io import write_jsonl
    from rewardlab.models import load_model
    from rewardlab.sampling import generate
    from rewardlab.world import load_world

    model, tokenizer = load_model(base, device="cpu", dtype="float32")
    prompts = load_world(world).prompts[:N_RECORDS]
    samples = generate(model, tokenizer, prompts, max_new_tokens=32, generator=torch.Generator().manual_seed(0))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out, ({"prompt": s.prompt, "completion": s.completion} for s in samples))
    return len(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, SIDES)
    ap.add_argument("--world", default=None, help="a built tiny review world (for --base and the prepared records)")
    ap.add_argument("--base", default=None, help="default: WORLD/base")
    ap.add_argument("--post", default=None, help="default: the base (see the module docstring)")
    ap.add_argument("--records", default=None, help="JSONL prompt/completion records (default: the prepared ones)")
    ap.add_argument("--prefixes", type=int, default=256)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=512)
    a = ap.parse_args()
    if a.scale != "tiny":
        ap.error("the value benchmark runs at the tiny scale only")
    if a.world is None and (a.base is None or a.records is None):
        ap.error("give --world, or both --base and --records")
    setup(a.threads)
    base = a.base or str(Path(a.world) / "base")
    records = Path(a.records) if a.records else records_path(a.scale)
    if a.side == "prepare":  # given records that exist are kept as they are
        n = None if a.records and records.is_file() else prepare_records(base, a.world, records)
        return prepared(a.scale, {"records": str(records), "n_records": n})

    from rewardlab.io import read_jsonl
    from rewardlab.models import ModelPair
    from rewardlab.rewards import get_reward
    from rewardlab.value.targets import TargetsConfig, build_prefixes, monte_carlo_values, realized_rewards

    pair = ModelPair.load(base, a.post or base, device="cpu", dtype="float32")
    cfg = TargetsConfig(k=a.k, batch_size=a.batch_size)
    prefixes = build_prefixes(pair.tokenizer, read_jsonl(records), cfg.positions)[:a.prefixes]
    reward = get_reward(cfg.reward)
    load_before = os.getloadavg()
    start = time.perf_counter()
    realized_rewards(pair.tokenizer, prefixes, reward)
    for model in (pair.post, pair.base):
        monte_carlo_values(model, pair.tokenizer, prefixes, reward, cfg)
    seconds = time.perf_counter() - start
    n = 2 * len(prefixes) * a.k
    print(f"load average before {load_before}, after {os.getloadavg()}")
    emit("rewardlab", a.scale, n / seconds, "continuations/s", seconds, prefixes=len(prefixes), models=2, k=a.k,
         continuations=n, threads=a.threads, model=f"{base} and {a.post or base}")


if __name__ == "__main__":
    main()
