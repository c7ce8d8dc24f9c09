"""PPO samples per second: rewardlab's PPO against TRL's RLOOTrainer, same model, reward, batch, length.

    python bench/ppo_throughput.py --base WORLD/base [--steps 5] [--batch 64] [--max-new-tokens 32]

Both run `steps` updates of `batch` completions of at most `max-new-tokens` tokens on CPU, 1 thread,
with a Python reward (rewardlab's utility) and a frozen reference for the KL, and the same number of
optimization passes over each batch (`--epochs`: rewardlab's ppo_epochs = RLOO's num_iterations;
default 1, RLOO's default; rewardlab's PPO default is 2). rewardlab: one phase per step (sampling,
scoring, value head, 2 minibatches per pass); RLOO: 4 generations per prompt. Timed: the training loop only (model loading and rewardlab's evaluation excluded;
rewardlab's time is the sum of its per-phase generation and learning seconds). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def bench_rewardlab(base: str, steps: int, batch: int, max_new_tokens: int, epochs: int, out: Path) -> dict:
    from rewardlab.io import read_jsonl
    from rewardlab.rl.config import PPOConfig
    from rewardlab.rl.ppo import train_ppo

    train_ppo(PPOConfig(base=base, phases=steps, batch_size=batch, max_new_tokens=max_new_tokens, ppo_epochs=epochs,
                        eval_samples=8), out)
    metrics = read_jsonl(out / "metrics.jsonl")
    seconds = sum(m["gen_seconds"] + m["learn_seconds"] for m in metrics)
    return {"seconds": seconds, "samples_per_s": steps * batch / seconds,
            "tokens_per_s": sum(m["completion_tokens_mean"] * batch for m in metrics) / seconds}


def bench_rloo(base: str, steps: int, batch: int, max_new_tokens: int, epochs: int, out: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import RLOOConfig, RLOOTrainer

    from rewardlab.rewards import get_reward
    from rewardlab.rl.inputs import load_prompts

    utility = get_reward("utility")

    def reward(completions, **kwargs):
        return utility([c.strip() for c in completions])

    prompts = load_prompts(base, None)
    args = RLOOConfig(output_dir=str(out), use_cpu=True, report_to=[], bf16=False, gradient_checkpointing=False,
                      per_device_train_batch_size=batch, num_generations=4, max_completion_length=max_new_tokens,
                      max_steps=steps, learning_rate=2e-4, save_strategy="no", logging_steps=1, disable_tqdm=True,
                      num_iterations=epochs, beta=0.05, seed=0)
    trainer = RLOOTrainer(model=AutoModelForCausalLM.from_pretrained(base), reward_funcs=reward, args=args,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                          processing_class=AutoTokenizer.from_pretrained(base))
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "samples_per_s": steps * batch / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    a = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ours = bench_rewardlab(a.base, a.steps, a.batch, a.max_new_tokens, a.epochs, Path(tmp) / "rewardlab")
        rloo = bench_rloo(a.base, a.steps, a.batch, a.max_new_tokens, a.epochs, Path(tmp) / "rloo")
    print(json.dumps({"steps": a.steps, "batch": a.batch, "max_new_tokens": a.max_new_tokens, "epochs": a.epochs,
                      "rewardlab_ppo": ours, "trl_rloo": rloo,
                      "ratio_samples_per_s": ours["samples_per_s"] / rloo["samples_per_s"]}))


if __name__ == "__main__":
    main()
