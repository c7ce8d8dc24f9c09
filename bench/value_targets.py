"""Monte Carlo value targets: wall time of `value targets` for N prefixes x 2 models at K continuations.

    python bench/value_targets.py --base WORLD/base --post PPO/policy --records RECORDS.jsonl \
        [--prefixes 256] [--k 16] [--threads 1]

The prefixes are the first `--prefixes` of the records at the default positions (last_prompt and
completion offsets 0, 2, 5, 10). Prints the machine's load average before and after (the machine
may be shared) and one JSON line: seconds, prefixes, continuations sampled, continuations per second.
The target (issue 19): 256 prefixes x 2 models at K = 16 in under 180 s on 2 cores (tiny world).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--post", required=True)
    ap.add_argument("--records", required=True, help="JSONL prompt/completion records")
    ap.add_argument("--prefixes", type=int, default=256)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: no OpenMP spin contention when the 2 cores are shared)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from rewardlab.io import read_jsonl
    from rewardlab.models import ModelPair
    from rewardlab.rewards import get_reward
    from rewardlab.value.targets import TargetsConfig, build_prefixes, monte_carlo_values, realized_rewards

    pair = ModelPair.load(args.base, args.post, device="cpu", dtype="float32")
    cfg = TargetsConfig(k=args.k, batch_size=args.batch_size)
    prefixes = build_prefixes(pair.tokenizer, read_jsonl(args.records), cfg.positions)[:args.prefixes]
    reward = get_reward(cfg.reward)
    load_before = os.getloadavg()
    start = time.perf_counter()
    realized_rewards(pair.tokenizer, prefixes, reward)
    for model in (pair.post, pair.base):
        monte_carlo_values(model, pair.tokenizer, prefixes, reward, cfg)
    seconds = time.perf_counter() - start
    n = 2 * len(prefixes) * args.k
    print(f"load average before {load_before}, after {os.getloadavg()}")
    print(json.dumps({"seconds": seconds, "prefixes": len(prefixes), "models": 2, "k": args.k,
                      "continuations": n, "continuations_per_s": n / seconds, "threads": args.threads,
                      "target_seconds": 180}))


if __name__ == "__main__":
    main()
