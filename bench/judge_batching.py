"""A local LLM judge's ratings, one conversation per forward pass vs padded batches.

    python bench/judge_batching.py [--model .cache/smollm2-135m-instruct] [--n 64] [--batch 16] [--threads 1]

The texts are `--n` review-world documents of the audit's stream (seed 0; the first 3 words the prompt,
the rest the completion), rated by `judge:MODEL,cache=off` (rubric review, scale 1-10, logprob mode)
once with batch=1 and once with batch=`--batch`, each after one untimed warm-up rating. Prints the
wall and CPU seconds of each pass (CPU time: this process's, the fairer clock on a shared machine), the
speedups and the largest |rating difference| between the two passes.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from rewardlab.audit import world_sources
from rewardlab.rewards import get_reward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=".cache/smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sources = world_sources(a.n, 0, 3)
    prompts, texts = [s["prompt"] for s in sources], [s["completion"] for s in sources]
    out = {"n": a.n, "batch": a.batch, "threads": a.threads}
    ratings = {}
    for batch in (1, a.batch):
        reward = get_reward(f"judge:{a.model},cache=off,batch={batch}")
        reward(texts[:1], prompts[:1])  # warm-up
        start, cpu = time.perf_counter(), time.process_time()
        ratings[batch] = reward(texts, prompts)
        out[f"seconds_batch_{batch}"] = round(time.perf_counter() - start, 2)
        out[f"cpu_seconds_batch_{batch}"] = round(time.process_time() - cpu, 2)
    out["speedup"] = round(out["seconds_batch_1"] / out[f"seconds_batch_{a.batch}"], 2)
    out["cpu_speedup"] = round(out["cpu_seconds_batch_1"] / out[f"cpu_seconds_batch_{a.batch}"], 2)
    out["max_abs_rating_diff"] = max(abs(x - y) for x, y in zip(ratings[1], ratings[a.batch]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
